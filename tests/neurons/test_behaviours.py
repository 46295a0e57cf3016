"""Each miner behaviour publishes exactly the transformation it names, through the real codec and
wire format, and passes (or fails) the acceptance rule the way only its own trick should.

No subnet, no chain: a strategy gets a ``WindowContext`` with a real honest message of the tiny
model's shapes, a signer and fake peers, and its payload is decoded and judged like a fetched one.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch

from compression import CompressedMessage, SparseUpdate, decode_message, decode_payload
from neurons.behaviours.context import WindowContext
from neurons.behaviours.kinds import ADVERSARIAL_KINDS, BYTE_LEVEL_KINDS, HONEST, KINDS
from neurons.behaviours.messages import dense_of, encode_dense, mean_dense, random_message
from neurons.behaviours.strategies import (
    SCALE_FACTOR,
    STRATEGIES,
    WRONG_DATA_SHIFT,
    Behaviour,
    make_behaviour,
)
from neurons.fetch import FetchedPayload
from neurons.gather import WindowGather, acceptance_rule_for
from neurons.localnet.hostile_payloads import Identity, signed_payload
from neurons.model import build_model, param_shapes
from protocol.acceptance import AcceptanceRule, Stage1Result, judge_payload, parameter_norms
from protocol.gather_set import GatherSet
from protocol.hparams import Hparams
from protocol.signing import HotkeySigner

UID, WINDOW = 9, 4


class World(NamedTuple):
    shapes: dict[str, tuple[int, ...]]
    who: Identity
    rule: AcceptanceRule
    honest: CompressedMessage
    peers: dict[int, SparseUpdate]


@pytest.fixture(scope="module")
def world(hparams: Hparams) -> World:
    model = build_model(hparams.model, hparams.seed)
    signer = HotkeySigner.from_uri("//Trudy")
    # an honest-sized message (per-parameter norms well under the bounds, as measured for tiny's
    # early windows) and two peers' uploads of the same window
    honest, peer_a, peer_b = (_message(param_shapes(model), hparams, seed) for seed in (1, 2, 3))
    return World(
        shapes=param_shapes(model),
        who=Identity(hparams.run_id, UID, signer.hotkey, signer.sign),
        rule=acceptance_rule_for(hparams, WINDOW, slot_start=0.0, param_norms=parameter_norms(model)),
        honest=honest,
        peers={2: decode_message(peer_a), 5: decode_message(peer_b)},
    )


def _message(shapes, hparams: Hparams, seed: int) -> CompressedMessage:
    return random_message(shapes, hparams.codec.chunk_size, hparams.codec.topk_per_chunk, seed)


def _context(world: World, window: int = WINDOW, honest: CompressedMessage | None = None, peers=None) -> WindowContext:
    return WindowContext(
        window=window, uid=UID, shapes=world.shapes, codec=world.honest.params,
        honest=world.honest if honest is None else honest,
        sign=lambda msg: signed_payload(msg, world.who, window, base_fingerprint="theta"),
        peer_updates=lambda: dict(world.peers if peers is None else peers),
    )


def _published(world: World, kind: str, **ctx) -> tuple[Stage1Result, SparseUpdate | None]:
    payload = make_behaviour(kind).payload(_context(world, **ctx))
    assert payload is not None, kind
    verdict = judge_payload(payload, UID, world.who.hotkey, world.rule, world.shapes)
    return verdict.result, verdict.decoded.update if verdict.decoded is not None else None


def _indices(update: SparseUpdate) -> set[tuple[str, int]]:
    return {(name, int(i)) for name, part in update.items() for i in part.indices}


def _overlap(a: SparseUpdate, b: SparseUpdate) -> float:
    return len(_indices(a) & _indices(b)) / len(_indices(a))


def test_every_kind_has_a_strategy_or_is_byte_level() -> None:
    assert set(STRATEGIES) | set(BYTE_LEVEL_KINDS) == set(KINDS)
    assert not set(STRATEGIES) & set(BYTE_LEVEL_KINDS)
    assert HONEST not in ADVERSARIAL_KINDS
    for kind in BYTE_LEVEL_KINDS:
        with pytest.raises(ValueError, match="neurons.localnet.adversary"):
            make_behaviour(kind)


def test_honest_publishes_its_own_message_signed(world) -> None:
    result, update = _published(world, HONEST)
    assert result.passed
    own = decode_message(world.honest)
    assert all(torch.equal(update[n].values, own[n].values) and torch.equal(update[n].indices, own[n].indices) for n in own)


@pytest.mark.parametrize(("kind", "factor"), [("scaled", SCALE_FACTOR), ("sign_flip", -1.0)])
def test_scaled_and_sign_flip_multiply_every_honest_value(world, kind: str, factor: float) -> None:
    result, update = _published(world, kind)
    assert result.passed  # inside the value bounds: acceptance cannot tell, only Gauntlet can
    own = decode_message(world.honest)
    for name, part in own.items():
        assert torch.equal(update[name].indices, part.indices)
        # scaled: the value table itself, exactly; sign_flip: re-quantized
        torch.testing.assert_close(update[name].values, part.values * factor, rtol=0.02, atol=1e-7)


def test_zeros_publishes_nothing_but_zeros(world) -> None:
    result, update = _published(world, "zeros")
    assert result.passed
    assert all(float(part.values.abs().max()) == 0.0 for part in update.values())
    assert not make_behaviour("zeros").trains(WINDOW)


def test_noise_has_the_honest_norm_and_its_own_coordinates(world) -> None:
    result, update = _published(world, "noise")
    assert result.passed
    own = decode_message(world.honest)
    for name, part in own.items():
        assert math.isclose(float(update[name].values.norm()), float(part.values.norm()), rel_tol=1e-4), name
    assert _overlap(update, own) < 0.2  # random coordinates, not the honest ones


def test_copy_takes_the_first_peer_of_the_window(world) -> None:
    result, update = _published(world, "copy")
    assert result.passed  # re-signed as its own: only copy detection can catch it
    victim = world.peers[2]
    assert _indices(update) == _indices(victim)
    for name, part in victim.items():
        torch.testing.assert_close(update[name].values, part.values, rtol=0.05, atol=1e-6)
    assert not make_behaviour("copy").trains(WINDOW)


def test_noised_copy_keeps_most_coordinates_but_not_the_values(world) -> None:
    result, update = _published(world, "noised_copy")
    assert result.passed
    victim = world.peers[2]
    assert _overlap(update, victim) > 0.8
    assert any(not torch.equal(update[n].values, victim[n].values) for n in victim)


@pytest.mark.parametrize("kind", ["copy", "noised_copy", "late_mean_copy"])
def test_copiers_publish_nothing_when_nobody_uploaded(world, kind: str) -> None:
    assert make_behaviour(kind).payload(_context(world, peers={})) is None


def test_late_mean_copy_publishes_the_mean_at_the_end_of_the_slot(world) -> None:
    shapes = world.shapes
    behaviour = make_behaviour("late_mean_copy")
    start, end = behaviour.upload_times(100.0, 103.0)
    assert 100.0 < start < end == 103.0 and end - start < 2.0
    result, update = _published(world, "late_mean_copy")
    assert result.passed
    expected = decode_message(encode_dense(mean_dense(list(world.peers.values()), shapes), world.honest.params))
    assert _indices(update) == _indices(expected)


def test_stale_republishes_its_first_message_for_later_windows(world, hparams: Hparams) -> None:
    shapes, who, honest = world.shapes, world.who, world.honest
    stale = make_behaviour("stale")
    assert stale.trains(WINDOW)
    stale.payload(_context(world))
    assert not stale.trains(WINDOW + 1)  # it never trains again
    later = WINDOW + 2
    payload = stale.payload(_context(world, window=later, honest=_message(shapes, hparams, 7)))
    rule = acceptance_rule_for(hparams, later, slot_start=0.0)
    verdict = judge_payload(payload, UID, who.hotkey, rule, shapes)
    assert verdict.result.passed and verdict.decoded.manifest.window == later  # re-signed for this window
    assert _indices(verdict.decoded.update) == _indices(decode_message(honest))


def test_prev_aggregate_republishes_what_every_node_applied(world) -> None:
    shapes, who, rule, peers = world.shapes, world.who, world.rule, world.peers
    behaviour = make_behaviour("prev_aggregate")
    assert behaviour.payload(_context(world)) is None  # nothing applied yet
    fetched = {
        uid: FetchedPayload(uid, Stage1Result.accept(uid), decoded=decode_payload(
            signed_payload(encode_dense(dense_of(upd), world.honest.params), who, WINDOW), shapes, 1 << 20))
        for uid, upd in peers.items()
    }
    gathered = WindowGather(WINDOW - 1, GatherSet([2, 5], []), [2, 5], fetched)
    behaviour.observe(gathered, shapes)
    payload = behaviour.payload(_context(world))
    verdict = judge_payload(payload, UID, who.hotkey, rule, shapes)
    assert verdict.result.passed
    union = _indices(peers[2]) | _indices(peers[5])
    assert _indices(verdict.decoded.update) <= union  # top-k of the aggregate sits inside its support


def test_wrong_data_trains_on_an_assignment_that_is_not_its_own() -> None:
    assert make_behaviour("wrong_data").assignment(UID, WINDOW) == (UID, WINDOW + WRONG_DATA_SHIFT)
    assert Behaviour().assignment(UID, WINDOW) == (UID, WINDOW)


@pytest.mark.parametrize("slot_start", [100.0, 100.4])
def test_late_lands_after_the_slot_even_in_whole_seconds(slot_start: float) -> None:
    slot_end = slot_start + 3.0
    start, _ = make_behaviour("late").upload_times(slot_start, slot_end)
    assert math.floor(start) > slot_end  # a truncated LastModified is still past the slot
    honest_start, honest_end = Behaviour().upload_times(slot_start, slot_end)
    assert slot_start <= math.floor(honest_start) and honest_end == slot_end


def test_desync_skips_the_outer_step_and_nobody_else_does() -> None:
    assert [k for k, cls in STRATEGIES.items() if not cls.applies_outer_step] == ["desync"]


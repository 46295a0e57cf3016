"""The local subnet's adversary serves what it claims: each hostile payload is refused by the
acceptance path with its own typed reason, the hostile server rotates through its behaviours and
ends every stall by itself, and the launcher registers adversaries apart from the miners."""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import time
from pathlib import Path

import pytest

from neurons.gather import acceptance_rule_for
from neurons.localnet.hostile_payloads import (
    GARBAGE_CLASSES,
    Identity,
    garbage,
    huge_values,
    random_message,
)
from neurons.localnet.hostile_server import BEHAVIOURS, LISTING, HostileS3Server
from neurons.localnet.launcher import _adversary_kinds, plan_network
from neurons.model import build_model, param_shapes
from protocol.acceptance import RejectReason, judge_payload, parameter_norms
from protocol.hparams import Hparams
from protocol.signing import HotkeySigner

UID, WINDOW = 7, 3
EXPECTED = {
    "truncated": RejectReason.UNDECODABLE,
    "surrogate_name": RejectReason.UNDECODABLE,
    "deep_json": RejectReason.UNDECODABLE,
    "wrong_signature": RejectReason.BAD_SIGNATURE,
    "wrong_window": RejectReason.WRONG_WINDOW,
    "oversized": RejectReason.UNDECODABLE,  # a fetch refuses it earlier, on HEAD, as oversized
}


@pytest.fixture(scope="module")
def setting(hparams: Hparams):
    model = build_model(hparams.model, hparams.seed)
    shapes = param_shapes(model)
    signer = HotkeySigner.from_uri("//Mallory")
    who = Identity(hparams.run_id, UID, signer.hotkey, signer.sign)
    msg = random_message(shapes, hparams.codec.chunk_size, hparams.codec.topk_per_chunk, seed=WINDOW)
    rule = acceptance_rule_for(hparams, WINDOW, slot_start=0.0, param_norms=parameter_norms(model))
    return shapes, who, msg, rule


def test_every_garbage_class_is_refused_with_its_reason(setting, hparams: Hparams) -> None:
    shapes, who, msg, rule = setting
    assert set(EXPECTED) == set(GARBAGE_CLASSES)
    for kind in GARBAGE_CLASSES:
        data = garbage(kind, msg, who, WINDOW, hparams.codec.max_payload_bytes)
        verdict = judge_payload(data, UID, who.hotkey, rule, shapes).result
        assert verdict.reason is EXPECTED[kind], (kind, verdict)
        assert "unexpected" not in verdict.detail, (kind, verdict)  # a typed refusal, not the guard


def test_huge_values_pass_everything_but_the_value_bounds(setting) -> None:
    shapes, who, msg, rule = setting
    data = huge_values(msg, who, WINDOW, base_fingerprint="theta")
    unbounded = judge_payload(data, UID, who.hotkey, dataclasses.replace(rule, bounds=None), shapes)
    assert unbounded.result.passed  # signed, on shape, right identity: only a bound can refuse it
    peak = max(float(t.values.abs().max()) for t in unbounded.decoded.update.values())
    assert 1e4 <= peak < 3.5e38
    assert judge_payload(data, UID, who.hotkey, rule, shapes).result.reason is RejectReason.OUT_OF_BOUNDS


def _request(server: HostileS3Server, method: str, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        response.read()
        return str(response.status)
    except (http.client.HTTPException, OSError) as exc:
        return type(exc).__name__
    finally:
        conn.close()


def test_hostile_server_rotates_and_every_stall_ends_by_itself() -> None:
    with HostileS3Server(stall_seconds=1.0) as server:
        started = time.monotonic()
        outcomes = [_request(server, "HEAD", "/bucket/some/key") for _ in BEHAVIOURS]
        listing = _request(server, "GET", "/bucket?list-type=2&prefix=run/")
        elapsed = time.monotonic() - started
    assert dict(server.served) == {**dict.fromkeys(BEHAVIOURS, 1), LISTING: 1}
    assert listing == "200"
    assert outcomes[BEHAVIOURS.index("redirect_loop")] == "301"
    assert elapsed < 10.0, outcomes  # drip and hang stop after stall_seconds, not the client's patience


def test_adversaries_register_after_miners_with_their_kind(tmp_path: Path) -> None:
    assert _adversary_kinds("huge_values, copy") == ["huge_values", "copy"]
    assert _adversary_kinds("values,garbage,server") == ["huge_values", "malformed", "slow_endpoint"]  # old names
    with pytest.raises(argparse.ArgumentTypeError):
        _adversary_kinds("values,nonsense")
    with pytest.raises(argparse.ArgumentTypeError):
        _adversary_kinds("honest")  # an honest miner is --miners, not an adversary
    chain, specs = plan_network(tmp_path, miners=1, validators=1, block_time=1.0, adversaries=["slow_endpoint", "copy"])
    roles = [(s.role, s.kind) for s in specs]
    assert roles == [("validator", ""), ("miner", ""), ("adversary", "slow_endpoint"), ("adversary", "copy")]
    assert [s.uid for s in specs] == [1, 2, 3, 4]  # uid 0 is the owner
    assert len({s.bucket for s in specs}) == len(specs)

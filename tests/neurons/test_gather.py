"""The window's gather: G(w) from chain state, every payload checked with a typed verdict, reserves
backfilling in a fixed order, and one outer step that does not depend on the order peers appear in.

A devchain holds registrations, bucket commitments and weights; each miner's bucket is a
LocalStore (opened through PeerDirectory's make_store seam) whose LastModified is set explicitly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from compression import aggregate
from neurons.gather import (
    UpdateLimits,
    WindowGather,
    acceptance_rule,
    apply_gather,
    gather_window,
    miner_uids,
)
from neurons.peers import PeerDirectory
from protocol.acceptance import RejectReason
from protocol.clock import WindowClock
from protocol.commitment import BucketCommitment
from protocol.devchain import DevChain
from protocol.gather_set import GatherSet
from protocol.hparams import Hparams, load_hparams
from protocol.keys import payload_key
from protocol.signing import HotkeySigner
from storage import StorageUnavailable
from storage.local import LocalStore

MAX_BYTES = 4096
BLOCK_TIME = 0.02  # devchain writes wait one block for inclusion


@functools.cache
def signer(i: int) -> HotkeySigner:
    return HotkeySigner.from_uri(f"//GatherTest{i}")


def small_hparams(gather_peers: int = 20, reserve_peers: int = 10) -> Hparams:
    """The tiny preset with the test payloads' codec (8x8 chunks, top-16) and a 4 kB cap."""
    hp = load_hparams("tiny")
    return hp.model_copy(update={
        "codec": hp.codec.model_copy(update={"chunk_size": 8, "topk_per_chunk": 16, "max_payload_bytes": MAX_BYTES}),
        "outer": hp.outer.model_copy(update={"gather_peers": gather_peers, "reserve_peers": reserve_peers}),
    })


class DownStore(LocalStore):
    """A bucket whose server refuses every request."""

    def head(self, key: str, *, deadline: float | None = None):
        raise StorageUnavailable(f"head {key}: connection refused")


@dataclass
class Net:
    chain: DevChain
    hparams: Hparams
    root: Path
    stores: dict[str, LocalStore] = field(default_factory=dict)
    uid_of: dict[int, int] = field(default_factory=dict)  # signer index -> uid
    clock: WindowClock = field(init=False)
    peers: PeerDirectory = field(init=False)

    def __post_init__(self) -> None:
        self.clock = WindowClock(self.chain, self.hparams.window.blocks_per_window, self.hparams.window.upload_slot_seconds)
        self.peers = PeerDirectory(self.chain, self.make_store)

    def make_store(self, c: BucketCommitment) -> LocalStore:
        kind = DownStore if c.bucket.startswith("down") else LocalStore
        return self.stores.setdefault(c.bucket, kind(self.root / c.bucket))

    def join(self, who: int, stake: float = 0.0, bucket: str | None = None) -> int:
        """Register signer ``who`` and commit its bucket (``bucket`` may be a raw malformed string)."""
        uid = self.chain.register(signer(who), signer(1000 + who).hotkey, stake=stake)
        self.uid_of[who] = uid
        text = BucketCommitment(endpoint_url="http://127.0.0.1:9", bucket=f"bucket-{who}",
                                access_key_id="reader", secret_access_key="s").encode() if bucket is None else bucket
        if text:
            self.chain.commit(signer(who), text)
        return uid

    def store_of(self, who: int) -> LocalStore:
        return self.make_store(BucketCommitment(endpoint_url="http://127.0.0.1:9", bucket=f"bucket-{who}",
                                                access_key_id="reader", secret_access_key="s"))

    def upload(self, who: int, window: int, data: bytes, stamp, *, late: float = 0.0) -> None:
        store, key = self.store_of(who), payload_key(self.hparams.run_id, window, self.uid_of[who])
        store.put(key, data)
        start, end = self.clock.upload_slot(window)
        stamp(store, key, end + late if late else start + 1.0)

    def next_window(self) -> int:
        """A window whose first block comes after everything registered so far."""
        return self.clock.current_window() + 1

    def gather(self, window: int, shapes, also_fetch=()) -> WindowGather:
        return gather_window(self.chain, self.clock, self.peers, self.hparams, shapes, window, also_fetch)


def make_net(chain: DevChain, tmp_path, hparams: Hparams | None = None) -> Net:
    net = Net(chain, hparams or small_hparams(), tmp_path)
    net.join(0, bucket="")  # the subnet owner (burn uid 0): never a miner
    return net


def honest(net: Net, make_payload, who: int, window: int) -> bytes:
    return make_payload(signer(who), uid=net.uid_of[who], window=window, run_id=net.hparams.run_id, seed=who)


# --- which payloads count ------------------------------------------------------------------------

FAULTS = {
    4: RejectReason.MISSING,  # nothing uploaded
    5: RejectReason.OVERSIZED,
    6: RejectReason.UNDECODABLE,  # truncated
    7: RejectReason.BAD_SIGNATURE,  # one byte flipped
    8: RejectReason.BAD_SIGNATURE,  # signed by another key
    9: RejectReason.WRONG_WINDOW,  # last window's payload
    10: RejectReason.WRONG_WINDOW,  # another run's payload
    11: RejectReason.LATE,
    12: RejectReason.MISSING,  # no bucket commitment
    13: RejectReason.MISSING,  # malformed bucket commitment
    14: RejectReason.UNDECODABLE,  # another codec than the network's (denser top-k)
    15: RejectReason.MISSING,  # bucket unreachable
}


def upload_faults(net: Net, make_payload, stamp, w: int) -> None:
    run = net.hparams.run_id

    def made(who: int, **kw) -> bytes:
        return make_payload(signer(kw.pop("by", who)), uid=net.uid_of[who], window=kw.pop("window", w),
                            run_id=kw.pop("run_id", run), seed=who, **kw)

    net.upload(5, w, b"\0" * (MAX_BYTES + 1), stamp)
    net.upload(6, w, made(6)[:-40], stamp)
    flipped = bytearray(made(7))
    flipped[-5] ^= 0x10
    net.upload(7, w, bytes(flipped), stamp)
    net.upload(8, w, made(8, by=99, hotkey=signer(8).hotkey), stamp)
    net.upload(9, w, made(9, window=w - 1), stamp)
    net.upload(10, w, made(10, run_id="tiny-000000000000"), stamp)
    net.upload(11, w, made(11), stamp, late=0.5)
    net.upload(14, w, made(14, topk_per_chunk=64), stamp)


def test_a_window_gathers_the_valid_payloads_and_names_every_rejection(devchain, tmp_path, make_payload, stamp, tiny_shapes):
    net = make_net(devchain, tmp_path)
    down = BucketCommitment(endpoint_url="http://127.0.0.1:9", bucket="down-15", access_key_id="reader",
                            secret_access_key="s").encode()
    for who in range(1, 16):
        net.join(who, bucket={12: "", 13: "1not,a,valid,commitment", 15: down}.get(who))
    w = net.next_window()
    for who in (1, 2, 3):
        net.upload(who, w, honest(net, make_payload, who, w), stamp)
    upload_faults(net, make_payload, stamp, w)

    gathered = net.gather(w, tiny_shapes)

    miners = [net.uid_of[who] for who in range(1, 16)]
    assert gathered.gather_set == GatherSet(gather=miners, reserves=[])  # a new network: everyone, by uid
    assert gathered.accepted == [net.uid_of[who] for who in (1, 2, 3)]
    reasons = {uid: f.result.reason for uid, f in gathered.fetched.items()}
    assert reasons == {net.uid_of[who]: FAULTS.get(who) for who in range(1, 16)}
    assert len(gathered.updates) == 3
    assert all(gathered.fetched[u].decoded.manifest.uid == u for u in gathered.accepted)


def test_reserves_fill_in_for_failed_gather_members_in_a_fixed_order(devchain, tmp_path, make_payload, stamp, tiny_shapes):
    net = make_net(devchain, tmp_path, small_hparams(gather_peers=2, reserve_peers=2))
    validator = net.join(90, stake=100.0, bucket="")
    for who in range(1, 6):
        net.join(who)
    u = net.uid_of
    devchain.set_weights(signer(90), {u[1]: 5.0, u[2]: 4.0, u[3]: 3.0, u[4]: 2.0})
    w = net.next_window()
    for who in (2, 3, 4, 5):  # the top-weighted miner uploads nothing
        net.upload(who, w, honest(net, make_payload, who, w), stamp)

    gathered = net.gather(w, tiny_shapes)

    assert validator not in gathered.fetched
    assert gathered.gather_set == GatherSet(gather=[u[1], u[2]], reserves=[u[3], u[4]])
    assert gathered.accepted == [u[2], u[3]]  # uid 5 is outside both tiers; uid 4 not needed
    assert gathered.fetched[u[1]].result.reason == RejectReason.MISSING
    assert u[5] not in gathered.fetched

    also = net.gather(w, tiny_shapes, also_fetch=[u[5], u[1]])  # validators look at everyone
    assert also.accepted == gathered.accepted
    assert also.fetched[u[5]].ok


def test_miners_are_neither_validators_nor_the_owner(devchain, tmp_path):
    net = make_net(devchain, tmp_path)
    v = net.join(1, stake=10.0, bucket="")
    m = [net.join(who, stake=5.0) for who in (2, 3)]  # paid miners: stake, and permits on this chain
    devchain.set_weights(signer(1), {m[0]: 1.0})  # a validator is one whose weights count
    hp = net.hparams
    assert miner_uids(devchain.metagraph(), hp) == m
    owned_by_m0 = hp.model_copy(update={"scoring": hp.scoring.model_copy(update={"burn_uid": m[0]})})
    assert miner_uids(devchain.metagraph(), owned_by_m0) == [0, m[1]]  # uid 0 is no longer the owner
    assert v not in miner_uids(devchain.metagraph(), owned_by_m0)


def test_acceptance_rule_follows_the_chain_clock_and_hparams(devchain, tmp_path):
    net = make_net(devchain, tmp_path)
    rule = acceptance_rule(net.hparams, net.clock, 7)
    start, end = net.clock.upload_slot(7)
    assert (rule.run_id, rule.window, rule.slot_start, rule.max_bytes) == (net.hparams.run_id, 7, start, MAX_BYTES)
    assert rule.slot_start + rule.slot_seconds == pytest.approx(end)
    assert rule.slot_start == devchain.block_timestamp(8 * net.hparams.window.blocks_per_window)
    assert (rule.codec.chunk_size, rule.codec.topk_per_chunk) == (8, 16)


# --- the same update whatever the order ----------------------------------------------------------


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _gather_in_registration_order(tmp_path, make_payload, stamp, tiny_shapes, order: list[int]):
    """A network where signers register in ``order`` (so they get other uids), all uploading the
    same updates; signer 4 is late and signer 5 flips a byte. Returns accepted signers and θ."""
    chain = DevChain.create(tmp_path / "chain.db", netuid=1, block_time=BLOCK_TIME)
    net = make_net(chain, tmp_path)
    for who in order:
        net.join(who)
    w = net.next_window()
    for who in order:
        data = honest(net, make_payload, who, w)
        if who == 5:
            data = data[:-3] + bytes([data[-3] ^ 1]) + data[-2:]
        net.upload(who, w, data, stamp, late=1.0 if who == 4 else 0.0)
    gathered = net.gather(w, tiny_shapes)
    model = torch.nn.Linear(64, 16)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
    apply_gather(model, gathered, tiny_shapes, outer_lr=net.hparams.outer.outer_lr)
    by_uid = {uid: who for who, uid in net.uid_of.items()}
    return sorted(by_uid[u] for u in gathered.accepted), _params(model)


def test_accepted_set_and_update_do_not_depend_on_the_order_peers_are_listed_in(tmp_path, make_payload, stamp, tiny_shapes):
    results = [
        _gather_in_registration_order(tmp_path / f"net{i}", make_payload, stamp, tiny_shapes, order)
        for i, order in enumerate(([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1], [3, 6, 1, 5, 2, 4]))
    ]
    accepted, theta = results[0]
    assert accepted == [1, 2, 3, 6]
    for other_accepted, other_theta in results[1:]:
        assert other_accepted == accepted
        assert all(torch.equal(theta[n], other_theta[n]) for n in theta)  # bit for bit


def test_apply_gather_is_the_outer_step_on_the_aggregate_in_any_order(devchain, tmp_path, make_payload, stamp,
                                                                        tiny_shapes, tiny_model):
    net = make_net(devchain, tmp_path)
    for who in (1, 2, 3, 4):
        net.join(who)
    w = net.next_window()
    for who in (1, 2, 3, 4):
        net.upload(who, w, honest(net, make_payload, who, w), stamp)
    gathered = net.gather(w, tiny_shapes)
    assert len(gathered.accepted) == 4

    base = tiny_model(7)
    theta0 = _params(base)
    dense = aggregate(gathered.updates, tiny_shapes)
    outcomes = []
    for accepted in (gathered.accepted, gathered.accepted[::-1], [gathered.accepted[i] for i in (2, 0, 3, 1)]):
        model = tiny_model(7)
        apply_gather(model, WindowGather(w, gathered.gather_set, accepted, gathered.fetched), tiny_shapes, outer_lr=0.5)
        outcomes.append(_params(model))
    for name in theta0:
        assert torch.equal(outcomes[0][name], theta0[name] - 0.5 * dense[name])
        assert all(torch.equal(o[name], outcomes[0][name]) for o in outcomes[1:])
    assert any(not torch.equal(outcomes[0][n], theta0[n]) for n in theta0)  # the step did move θ


def test_a_step_that_would_leave_theta_out_of_bounds_is_not_taken(devchain, tmp_path, make_payload, stamp,
                                                                  tiny_shapes, tiny_model):
    net = make_net(devchain, tmp_path)
    for who in (1, 2):
        net.join(who)
    w = net.next_window()
    for who in (1, 2):
        net.upload(who, w, honest(net, make_payload, who, w), stamp)
    gathered = net.gather(w, tiny_shapes)
    model = tiny_model(7)  # |θ| about 3 (randn)
    theta0 = _params(model)
    tight = UpdateLimits(clip_ratio=1.0, floor=1.0, max_abs_param=0.5)
    assert not apply_gather(model, gathered, tiny_shapes, outer_lr=1.0, limits=tight)
    assert all(torch.equal(p, theta0[n]) for n, p in _params(model).items())
    loose = UpdateLimits(clip_ratio=1.0, floor=1.0, max_abs_param=1e3)
    assert apply_gather(model, gathered, tiny_shapes, outer_lr=1.0, limits=loose)
    assert any(not torch.equal(p, theta0[n]) for n, p in _params(model).items())


def test_a_window_with_nothing_accepted_leaves_the_model_alone(devchain, tmp_path, tiny_shapes, tiny_model):
    net = make_net(devchain, tmp_path)
    for who in (1, 2):
        net.join(who)
    w = net.next_window()
    gathered = net.gather(w, tiny_shapes)  # nobody uploaded
    assert gathered.accepted == []
    assert {f.result.reason for f in gathered.fetched.values()} == {RejectReason.MISSING}
    model = tiny_model(3)
    before = _params(model)
    apply_gather(model, gathered, tiny_shapes, outer_lr=1.0)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())

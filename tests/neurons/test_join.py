"""Joining without a leader: the newest validator checkpoint whose fingerprint validators holding
more than half of all validator stake published, else θ0 at window 0. Forged, minority (by stake,
not by head count), lone, corrupt, oversized and future checkpoints are passed over.

Validators are devchain neurons with stake; their buckets are LocalStores holding real
checkpoints (neurons.checkpoint) and fingerprint records, as the validator loop writes them.
"""

from __future__ import annotations

import functools
import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_save

from neurons.checkpoint import CheckpointManifest, checkpoint_bytes
from neurons.fingerprint import model_fingerprint
from neurons.join import Electorate, join_from_checkpoint, majority_fingerprint
from neurons.model import build_model, param_shapes
from neurons.peers import PeerDirectory
from protocol.chain import Metagraph, NeuronInfo
from protocol.clock import WindowClock
from protocol.commitment import BucketCommitment
from protocol.devchain import DevChain
from protocol.fingerprint_record import FingerprintRecord
from protocol.hparams import Hparams, load_hparams
from protocol.keys import checkpoint_key, checkpoint_prefix, fingerprint_key
from protocol.signing import HotkeySigner
from storage.local import LocalStore

# The devchain started long ago, so windows in the low hundreds have closed already.
GENESIS_AGE_S = 100.0
BLOCK_TIME = 0.02


@functools.cache
def signer(i: int) -> HotkeySigner:
    return HotkeySigner.from_uri(f"//JoinTest{i}")


@functools.cache
def hparams() -> Hparams:
    """The tiny preset with a ~5k-parameter Llama, so θ0 and checkpoints cost milliseconds."""
    hp = load_hparams("tiny")
    model = hp.model.model_copy(update={"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
                                        "num_layers": 1, "num_heads": 2, "num_kv_heads": 2, "max_seq_len": 16})
    return hp.model_copy(update={"model": model, "training": hp.training.model_copy(update={"seq_len": 16})})


@dataclass
class Config:
    device: str = "cpu"


@dataclass
class JoiningNode:
    """What join_from_checkpoint reads from a node."""

    chain: DevChain
    peers: PeerDirectory
    uid: int
    hparams: Hparams = field(default_factory=hparams)
    config: Config = field(default_factory=Config)
    model: torch.nn.Module = field(init=False)
    shapes: dict = field(init=False)
    clock: WindowClock = field(init=False)

    def __post_init__(self) -> None:
        self.model = theta(seed=999)  # whatever the node held before: join must replace it
        self.shapes = param_shapes(self.model)
        window = self.hparams.window
        self.clock = WindowClock(self.chain, window.blocks_per_window, window.upload_slot_seconds)

    @property
    def name(self) -> str:
        return f"joiner-{self.uid}"


def theta(seed: int | None = None) -> torch.nn.Module:
    """θ0 of the run, or (with ``seed``) θ0 moved by a seeded step: a later network state."""
    model = build_model(hparams().model, hparams().seed)
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=gen))
    return model


@dataclass
class Net:
    chain: DevChain
    root: Path
    stores: dict[str, LocalStore] = field(default_factory=dict)
    uid_of: dict[int, int] = field(default_factory=dict)
    owner: int = field(init=False)

    def __post_init__(self) -> None:
        self.owner = self.chain.register(signer(400), signer(900).hotkey)  # the subnet owner's uid

    def make_store(self, c: BucketCommitment) -> LocalStore:
        return self.stores.setdefault(c.bucket, LocalStore(self.root / c.bucket))

    def join(self, who: int, stake: float) -> int:
        uid = self.chain.register(signer(who), signer(500 + who).hotkey, stake=stake)
        self.chain.commit(signer(who), BucketCommitment(endpoint_url="http://127.0.0.1:9", bucket=f"bucket-{who}",
                                                        access_key_id="reader", secret_access_key="s").encode())
        self.uid_of[who] = uid
        if stake > 0:  # a validator: it has set weights (protocol.roles), so its fingerprint votes
            self.chain.set_weights(signer(who), {self.owner: 1.0})
        return uid

    def bucket(self, who: int) -> LocalStore:
        return self.stores.setdefault(f"bucket-{who}", LocalStore(self.root / f"bucket-{who}"))

    def publish_fingerprint(self, who: int, window: int, fingerprint: str) -> None:
        record = FingerprintRecord(window=window, fingerprint=fingerprint, gathered=[], uid=self.uid_of[who])
        self.publish_raw_fingerprint(who, window, record.to_bytes())

    def publish_raw_fingerprint(self, who: int, window: int, body: bytes) -> None:
        """Publish ``body`` as the record, replacing any (objects are immutable only by convention)."""
        key = fingerprint_key(hparams().run_id, window, self.uid_of[who])
        self.bucket(who).delete(key)
        self.bucket(who).put(key, body)

    def publish_checkpoint(self, who: int, window: int, model: torch.nn.Module, *, fingerprint: bool = True) -> str:
        """What a validator writes after window ``window``: checkpoint and θ_{window+1}'s fingerprint."""
        fp = model_fingerprint(model)
        manifest = CheckpointManifest(run_id=hparams().run_id, window=window, global_step=window * 8, fingerprint=fp)
        self.bucket(who).put(checkpoint_key(hparams().run_id, window), checkpoint_bytes(model, manifest))
        if fingerprint:
            self.publish_fingerprint(who, window, fp)
        return fp

    def joiner(self, who: int = 0) -> JoiningNode:
        uid = self.uid_of.get(who)
        if uid is None:
            uid = self.chain.register(signer(who), signer(500 + who).hotkey)
        return JoiningNode(self.chain, PeerDirectory(self.chain, self.make_store), uid)


@pytest.fixture
def net(tmp_path) -> Net:
    chain = DevChain.create(tmp_path / "chain.db", netuid=1, block_time=BLOCK_TIME, genesis=time.time() - GENESIS_AGE_S)
    return Net(chain, tmp_path)


def fingerprint_of(node: JoiningNode) -> str:
    return model_fingerprint(node.model)


# --- nothing to join from ------------------------------------------------------------------------


def test_no_validators_means_theta0_at_window_0(net):
    node = net.joiner()
    assert fingerprint_of(node) != model_fingerprint(theta())
    assert join_from_checkpoint(node) == 0
    assert fingerprint_of(node) == model_fingerprint(theta())


def test_validators_without_checkpoints_mean_theta0_at_window_0(net):
    for who in (1, 2):
        net.join(who, stake=10.0)
        net.publish_fingerprint(who, 100, model_fingerprint(theta(1)))
    node = net.joiner()
    assert join_from_checkpoint(node) == 0
    assert fingerprint_of(node) == model_fingerprint(theta())


# --- the majority's checkpoint -------------------------------------------------------------------


def test_the_newest_majority_checkpoint_is_loaded(net):
    for who in (1, 2, 3):
        net.join(who, stake=10.0)
    older, newer = theta(1), theta(2)
    for who in (1, 2, 3):
        net.publish_checkpoint(who, 100, older)
        fp = net.publish_checkpoint(who, 102, newer)
    node = net.joiner()

    assert join_from_checkpoint(node) == 103  # the checkpoint of window 102 holds θ_103
    assert fingerprint_of(node) == fp


def test_a_forged_checkpoint_of_a_minority_validator_is_ignored(net):
    for who in (1, 2, 3):
        net.join(who, stake=10.0)
    honest, forged = theta(1), theta(66)
    fp = net.publish_checkpoint(1, 100, honest)
    net.publish_checkpoint(2, 100, honest)
    # Validator 3 has the highest uid, so its checkpoint of the same window is tried first.
    net.publish_checkpoint(3, 100, forged)
    node = net.joiner()

    metagraph = net.chain.metagraph()
    node.peers.refresh(metagraph)
    assert majority_fingerprint(node, Electorate.from_metagraph(metagraph, node.uid), 100) == fp
    assert join_from_checkpoint(node) == 101
    assert fingerprint_of(node) == fp


def test_a_checkpoint_whose_tensors_do_not_match_its_claimed_fingerprint_is_ignored(net):
    for who in (1, 2, 3):
        net.join(who, stake=10.0)
    honest, forged = theta(1), theta(66)
    fp = net.publish_checkpoint(1, 100, honest)
    net.publish_checkpoint(2, 100, honest)
    net.publish_fingerprint(3, 100, fp)  # validator 3 claims the honest fingerprint...
    lie = CheckpointManifest(run_id=hparams().run_id, window=100, global_step=800, fingerprint=fp)
    tensors = {n: p.detach().clone() for n, p in forged.named_parameters()}  # ...for other tensors
    net.bucket(3).put(checkpoint_key(hparams().run_id, 100),
                      safetensors_save(tensors, metadata={"tessera.checkpoint": lie.model_dump_json()}))
    node = net.joiner()

    assert join_from_checkpoint(node) == 101
    assert fingerprint_of(node) == fp


def test_a_newer_checkpoint_without_a_majority_is_passed_over(net):
    for who in (1, 2, 3):
        net.join(who, stake=10.0)
    honest = theta(1)
    fp = net.publish_checkpoint(1, 100, honest)
    net.publish_checkpoint(2, 100, honest)
    net.publish_checkpoint(3, 100, honest)
    # At window 102 the three validators disagree: no fingerprint has more than half.
    for who in (1, 2, 3):
        net.publish_checkpoint(who, 102, theta(10 + who))
    node = net.joiner()

    assert join_from_checkpoint(node) == 101
    assert fingerprint_of(node) == fp


def test_a_lone_checkpoint_for_a_future_window_is_ignored(net):
    for who in (1, 2, 3):
        net.join(who, stake=10.0)
    honest = theta(1)
    fp = net.publish_checkpoint(1, 100, honest)
    net.publish_checkpoint(2, 100, honest)
    # Validator 3 alone publishes a checkpoint and fingerprint for a window that has not happened:
    # as the only fingerprint published for it, it would otherwise be "the majority".
    future = net.chain.block() // hparams().window.blocks_per_window + 50
    net.publish_checkpoint(3, future, theta(66))
    node = net.joiner()

    assert join_from_checkpoint(node) == 101
    assert fingerprint_of(node) == fp


def test_unusable_checkpoints_are_skipped(net):
    for who in (1, 2):
        net.join(who, stake=10.0)
    honest = theta(1)
    fp = net.publish_checkpoint(1, 100, honest)
    net.publish_checkpoint(2, 100, honest)
    # Validator 2's newer checkpoint is truncated, and a stray object sits in its prefix.
    good = theta(2)
    newer_fp = net.publish_checkpoint(1, 102, good, fingerprint=True)
    net.publish_fingerprint(2, 102, newer_fp)
    whole = checkpoint_bytes(good, CheckpointManifest(run_id=hparams().run_id, window=102, global_step=816,
                                                      fingerprint=newer_fp))
    net.bucket(2).put(checkpoint_key(hparams().run_id, 102), whole[: len(whole) // 2])
    net.bucket(2).put(checkpoint_prefix(hparams().run_id) + "README", b"not a checkpoint")
    node = net.joiner()

    # Validator 2's (uid 2 > uid 1) broken copy of window 102 is tried first and skipped.
    assert join_from_checkpoint(node) == 103
    assert fingerprint_of(node) == newer_fp != fp


def test_a_joining_validator_does_not_vote_for_itself(net):
    net.join(1, stake=10.0)
    net.join(2, stake=10.0)
    fp = net.publish_checkpoint(1, 100, theta(1))
    net.publish_checkpoint(2, 100, theta(1))
    # Validator 2 restarts without local state and joins; its own old objects disagree (say it
    # was out of step) but only the other validators decide.
    net.publish_checkpoint(2, 102, theta(7))
    node = net.joiner(2)

    assert join_from_checkpoint(node) == 101
    assert fingerprint_of(node) == fp


def test_miners_checkpoints_do_not_count(net):
    net.join(1, stake=10.0)
    net.join(2, stake=0.0)  # a miner: no stake, no validator permit
    fp = net.publish_checkpoint(1, 100, theta(1))
    net.publish_checkpoint(2, 104, theta(5))
    node = net.joiner()

    assert join_from_checkpoint(node) == 101
    assert fingerprint_of(node) == fp


# --- stake decides, and silence counts against -----------------------------------------------------


def test_many_low_stake_validators_are_outvoted_by_one_holding_most_stake(net):
    net.join(1, stake=100.0)
    sybils = range(11, 21)
    for who in sybils:
        net.join(who, stake=0.1)  # ten permits for almost no stake
    fp = net.publish_checkpoint(1, 100, theta(1))
    forged = theta(66)
    for who in sybils:
        net.publish_checkpoint(who, 100, forged)  # ten heads against one at the same window...
        net.publish_checkpoint(who, 102, forged)  # ...and alone at a newer one
    node = net.joiner()

    assert join_from_checkpoint(node) == 101
    assert fingerprint_of(node) == fp


def test_more_heads_with_less_stake_lose_to_an_honest_stake_majority(net):
    for who, stake in ((1, 60.0), (2, 25.0), (3, 15.0)):
        net.join(who, stake=stake)
    fp = net.publish_checkpoint(1, 100, theta(1))
    net.publish_checkpoint(2, 100, theta(66))
    net.publish_checkpoint(3, 100, theta(66))
    node = net.joiner()

    assert join_from_checkpoint(node) == 101
    assert fingerprint_of(node) == fp


def test_a_stake_majority_is_accepted_while_the_others_are_silent(net):
    for who, stake in ((1, 60.0), (2, 25.0), (3, 15.0)):
        net.join(who, stake=stake)
    for who in (1, 2, 3):
        net.publish_checkpoint(who, 100, theta(1))
    fp = net.publish_checkpoint(1, 102, theta(2))  # validators 2 and 3 have not published 102 yet
    node = net.joiner()

    assert join_from_checkpoint(node) == 103
    assert fingerprint_of(node) == fp


@pytest.mark.parametrize(("lone_stake", "accepted"), [(1.0, False), (10.0, False), (19.0, False), (21.0, True)])
def test_a_lone_answer_counts_only_with_more_than_half_of_all_stake(net, lone_stake, accepted):
    net.join(1, stake=10.0)
    net.join(2, stake=10.0)
    net.join(3, stake=lone_stake)
    for who in (1, 2, 3):
        older = net.publish_checkpoint(who, 100, theta(1))
    # Validator 3 publishes window 102 before the others do: among those who answered, it is all.
    newer = net.publish_checkpoint(3, 102, theta(2))
    node = net.joiner()

    assert join_from_checkpoint(node) == (103 if accepted else 101)
    assert fingerprint_of(node) == (newer if accepted else older)


def test_two_equal_validators_must_both_agree(net):
    net.join(1, stake=10.0)
    net.join(2, stake=10.0)
    for who in (1, 2):
        net.publish_checkpoint(who, 100, theta(1))
    fp = net.publish_checkpoint(1, 102, theta(2), fingerprint=False)
    net.publish_fingerprint(1, 102, fp)  # exactly half of the stake: not yet a majority
    node = net.joiner()
    assert join_from_checkpoint(node) == 101

    net.publish_fingerprint(2, 102, fp)
    assert join_from_checkpoint(net.joiner(3)) == 103


def test_a_forgers_lone_fingerprint_after_the_honest_ones_were_pruned_is_refused(net):
    for who in (1, 2, 3):
        net.join(who, stake=10.0)
    for who in (1, 2):
        net.publish_checkpoint(who, 100, theta(1))
        net.bucket(who).delete(fingerprint_key(hparams().run_id, 100, net.uid_of[who]))
    net.publish_checkpoint(3, 100, theta(66))  # the forger kept its fingerprint of window 100
    node = net.joiner()

    # Nothing is confirmed, so the joiner starts over from θ0 rather than from the forgery.
    assert join_from_checkpoint(node) == 0
    assert fingerprint_of(node) == model_fingerprint(theta())


# --- the electorate ------------------------------------------------------------------------------


def neuron(uid: int, stake: float, permit: bool = True, validates: bool = True) -> NeuronInfo:
    return NeuronInfo(uid=uid, hotkey=f"hk{uid}", coldkey=f"ck{uid}", stake=stake, validator_permit=permit,
                      weights={99: 1.0} if validates else {})


def test_the_electorate_is_every_other_permit_holder_by_stake():
    metagraph = Metagraph(netuid=1, block=10, neurons=(
        neuron(0, 0.0, permit=False), neuron(1, 30.0), neuron(2, 50.0), neuron(3, 20.0), neuron(4, 90.0, permit=False),
        neuron(5, float("nan")), neuron(6, -5.0),
    ))
    electorate = Electorate.from_metagraph(metagraph, joiner=2)

    assert electorate.uids == [1, 3, 5, 6]
    assert electorate.total == 50.0  # NaN and negative stake weigh nothing
    assert electorate.confirms(25.01) and not electorate.confirms(25.0)


def test_a_paid_miner_with_a_permit_does_not_vote():
    # incentive is staked to the miner's hotkey and buys it a permit; it sets no weights
    metagraph = Metagraph(netuid=1, block=10, neurons=(neuron(1, 100.0), neuron(5, 500.0, validates=False)))
    electorate = Electorate.from_metagraph(metagraph, joiner=9)
    assert electorate.uids == [1] and electorate.confirms(50.01)


def test_an_electorate_without_stake_confirms_nothing():
    electorate = Electorate.from_metagraph(Metagraph(1, 10, (neuron(1, 0.0), neuron(2, 0.0))), joiner=9)
    assert electorate.uids == [1, 2]
    assert not electorate.confirms(0.0)


# --- hostile validator objects: only that validator's vote or checkpoint stops counting -------------


def _poisoned_checkpoint(window: int, model: torch.nn.Module, value: float) -> tuple[bytes, str]:
    """A checkpoint whose manifest honestly fingerprints poisoned tensors (as a colluding majority would)."""
    tensors = {n: p.detach().clone() for n, p in model.named_parameters()}
    next(iter(tensors.values())).view(-1)[0] = value
    fp = model_fingerprint(tensors)
    manifest = CheckpointManifest(run_id=hparams().run_id, window=window, global_step=window * 8, fingerprint=fp)
    return safetensors_save(tensors, metadata={"tessera.checkpoint": manifest.model_dump_json()}), fp


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 3.0e38])
def test_a_poisoned_checkpoint_of_a_stake_majority_is_refused(net, value):
    for who in (1, 2, 3):
        net.join(who, stake=10.0)
    for who in (1, 2, 3):
        fp = net.publish_checkpoint(who, 100, theta(1))
    # At window 102 every validator publishes (and fingerprints) the same poisoned θ: confirmed by
    # all the stake, and still refused, so the joiner falls back to the older checkpoint.
    data, poisoned_fp = _poisoned_checkpoint(102, theta(2), value)
    for who in (1, 2, 3):
        net.bucket(who).put(checkpoint_key(hparams().run_id, 102), data)
        net.publish_fingerprint(who, 102, poisoned_fp)
    node = net.joiner()

    assert join_from_checkpoint(node) == 101
    assert fingerprint_of(node) == fp
    assert all(torch.isfinite(p).all() for p in node.model.parameters())


HOSTILE_RECORDS = {
    "deep nesting": b"[" * 50_000,
    "not json": b"\xff\xfe{",
    "wrong types": json.dumps({"window": "100", "fingerprint": 7, "gathered": {}, "uid": None}).encode(),
    "extra keys": json.dumps({"window": 100, "fingerprint": "ab", "gathered": [], "uid": 3, "x": 1}).encode(),
    "unencodable": b'{"window": 100, "fingerprint": "\\ud800", "gathered": [], "uid": 3}',
}


@pytest.mark.parametrize("body", HOSTILE_RECORDS.values(), ids=HOSTILE_RECORDS.keys())
def test_a_hostile_fingerprint_record_only_loses_its_validators_vote(net, body):
    for who in (1, 2, 3):
        net.join(who, stake=10.0)
    for who in (1, 2, 3):
        fp = net.publish_checkpoint(who, 100, theta(1))
    net.publish_raw_fingerprint(3, 100, body)  # validator 3's record is replaced by hostile bytes
    node = net.joiner()

    assert join_from_checkpoint(node) == 101  # validators 1 and 2 still hold 2/3 of the stake
    assert fingerprint_of(node) == fp


def test_a_record_claiming_another_uid_or_window_is_no_vote(net):
    net.join(1, stake=10.0)
    net.join(2, stake=10.0)
    fp = net.publish_checkpoint(1, 100, theta(1))
    net.publish_checkpoint(2, 100, theta(1), fingerprint=False)
    # validator 2 copies validator 1's record (its uid) and an older window's record: neither counts
    copied = FingerprintRecord(window=100, fingerprint=fp, gathered=[], uid=net.uid_of[1])
    net.publish_raw_fingerprint(2, 100, copied.to_bytes())
    node = net.joiner(3)
    assert join_from_checkpoint(node) == 0  # only half of the stake stands behind fp

    other_window = FingerprintRecord(window=99, fingerprint=fp, gathered=[], uid=net.uid_of[2])
    net.publish_raw_fingerprint(2, 100, other_window.to_bytes())
    assert join_from_checkpoint(net.joiner(4)) == 0

    net.publish_fingerprint(2, 100, fp)
    assert join_from_checkpoint(net.joiner(5)) == 101


def test_a_checkpoint_header_with_a_bad_shape_is_skipped(net):
    for who in (1, 2):
        net.join(who, stake=10.0)
    fp = net.publish_checkpoint(1, 100, theta(1))
    net.publish_checkpoint(2, 100, theta(1))
    key = checkpoint_key(hparams().run_id, 100)
    whole = net.bucket(2).get(key, 1 << 30)
    (n,) = struct.unpack("<Q", whole[:8])
    header = json.loads(whole[8 : 8 + n])
    next(v for k, v in header.items() if k != "__metadata__")["shape"] = 7
    raw = json.dumps(header).encode()
    net.bucket(2).delete(key)
    net.bucket(2).put(key, struct.pack("<Q", len(raw)) + raw + whole[8 + n :])
    node = net.joiner()

    # validator 2's checkpoint (higher uid, tried first) is refused; validator 1's is loaded
    assert join_from_checkpoint(node) == 101
    assert fingerprint_of(node) == fp


class ExplodingStore(LocalStore):
    """A bucket whose every read fails with what no reader foresaw (a bug or an unforeseen attack)."""

    def get(self, key: str, max_bytes: int, *, deadline: float | None = None) -> bytes:
        raise RecursionError("maximum recursion depth exceeded")

    def list(self, prefix: str = "", *, deadline: float | None = None):
        raise TypeError("'NoneType' object is not iterable")


def test_unexpected_exceptions_from_one_validator_are_contained_and_named(net, caplog):
    for who in (1, 2, 3):
        net.join(who, stake=10.0)
    net.stores["bucket-3"] = ExplodingStore(net.root / "bucket-3")
    for who in (1, 2):
        fp = net.publish_checkpoint(who, 100, theta(1))
    node = net.joiner()

    with caplog.at_level("WARNING"):
        assert join_from_checkpoint(node) == 101
    assert fingerprint_of(node) == fp
    assert "TypeError" in caplog.text and "RecursionError" in caplog.text


def test_a_huge_checkpoint_listing_costs_only_a_bounded_number_of_tries(net, monkeypatch):
    import neurons.join as join

    for who in (1, 2):
        net.join(who, stake=10.0)
    fp = net.publish_checkpoint(1, 100, theta(1))
    net.publish_checkpoint(2, 100, theta(1))
    for w in range(101, 141):  # validator 2 also lists forty junk checkpoints nobody confirms
        net.bucket(2).put(checkpoint_key(hparams().run_id, w), b"junk")
    looked_up = []
    real = join.majority_fingerprint
    monkeypatch.setattr(join, "majority_fingerprint", lambda *a: looked_up.append(a[2]) or real(*a))
    node = net.joiner()

    assert join_from_checkpoint(node) == 101
    assert fingerprint_of(node) == fp
    assert len(looked_up) <= 2 * join.MAX_CHECKPOINTS_PER_VALIDATOR


class HangingStore(LocalStore):
    """A validator bucket that lists many recent checkpoints but whose every read runs into the
    deadline (simulated: a StorageTimeout after a short wait), as a dripping server would."""

    def __init__(self, root, windows: list[int]) -> None:
        super().__init__(root)
        self.windows = windows
        self.reads = 0

    def list(self, prefix: str = "", *, deadline: float | None = None):
        import datetime as dt

        from storage import ObjectInfo

        now = dt.datetime.now(dt.UTC)
        return [ObjectInfo(checkpoint_key(hparams().run_id, w), 10, now) for w in self.windows]

    def get(self, key: str, max_bytes: int, *, deadline: float | None = None) -> bytes:
        from storage.errors import StorageTimeout

        self.reads += 1
        time.sleep(0.05)
        raise StorageTimeout(f"get {key}: deadline passed")


def test_a_hanging_validator_costs_one_deadline_per_join_not_one_per_object(net):
    for who in (1, 2, 3, 4):
        net.join(who, stake=10.0 if who < 3 else 1.0)
    for who in (1, 2):
        fp = net.publish_checkpoint(who, 80, theta(1))
    # they list ten windows newer than the honest checkpoint: each is a candidate to confirm first
    hanging = {who: HangingStore(net.root / f"hang-{who}", list(range(90, 100))) for who in (3, 4)}
    for who, store in hanging.items():
        net.stores[f"bucket-{who}"] = store
    node = net.joiner()

    assert join_from_checkpoint(node) == 81
    assert fingerprint_of(node) == fp
    # each hanging validator is asked once (its first fingerprint record), then left out
    assert [s.reads for s in hanging.values()] == [1, 1]

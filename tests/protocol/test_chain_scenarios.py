"""Issue 9's live-network scenarios, each against both backends: the devchain and the bittensor
adapter on the real SDK over a fake substrate (``tests.protocol.fake_substrate``).

The network is the one a node meets on finney: the subnet was registered at block 5,000,000 and the
run's origin is that block, so the head is far from genesis and nothing exists before it. Owner uid
0, validator uid 1 (stake, permit, weights), miners 2-4, of which uid 3 is a *paid* miner: its
incentive was staked to its hotkey, so it holds stake and a validator permit.

- the node's start-up and catch-up begin at the origin (window 0 there, ``global_step`` small) and
  never read a block before it; both backends refuse such a read;
- the paid miner stays a miner (``protocol.roles``): gathered, fetched for scoring, accepted; a
  node outside its role is told why;
- with missed block slots, window w's upload slot starts at the real timestamp of the block that
  opens w+1, and a miner that uploads right after that block is accepted;
- a timestamp asked for a block that does not exist yet is a prediction, never an SDK error; a
  block the node cannot resolve is a typed ``ChainError``.

An SDK ``ValueError`` during a window (it does not end the node) is
``test_chain_rules.test_a_chain_read_that_fails_does_not_end_a_node``, on both backends too.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import bittensor
import pytest
import torch

from compression import ErrorFeedbackCompressor, PayloadManifest, encode_payload
from neurons.behaviours.strategies import Behaviour
from neurons.config import BucketConfig, NodeConfig
from neurons.gather import gather_window, miner_uids
from neurons.node import assemble_node, catch_up, start_window, warn_if_excluded
from neurons.peers import PeerDirectory
from protocol.acceptance import RejectReason, check_slot
from protocol.chain import Chain, ChainError, Metagraph, WeightsPolicy
from protocol.chain_bittensor import BittensorChain
from protocol.clock import WindowClock
from protocol.commitment import BucketCommitment
from protocol.devchain import DevChain
from protocol.hparams import Hparams, load_hparams
from protocol.keys import payload_key
from protocol.origin import RunOrigin, hparams_digest
from protocol.roles import excluded_reason, role_of
from protocol.signing import HotkeySigner, Signer
from storage.local import LocalStore
from tests.protocol import fake_substrate
from tests.protocol.fake_substrate import FakeSubstrate

NETUID = 7
ORIGIN = 5_000_000
OWNER, VALIDATOR, MINER, PAID, MINER_C = (
    HotkeySigner.from_uri(f"//Scenario{n}") for n in ("Owner", "Validator", "Miner", "Paid", "MinerC")
)
SIGNERS = (OWNER, VALIDATOR, MINER, PAID, MINER_C)
OWNER_UID, VAL_UID, MINER_UID, PAID_UID = 0, 1, 2, 3
STAKES = {VALIDATOR: 1000.0, PAID: 12.0}  # the paid miner's incentive, staked to its hotkey
DEVCHAIN_BLOCK_TIME = 1.0
SHAPES = {"weight": (16, 64), "bias": (16,)}


def scenario_hparams() -> Hparams:
    """The tiny preset with a codec small payloads fit (8x8 chunks, top-16)."""
    hp = load_hparams("tiny")
    return hp.model_copy(update={"codec": hp.codec.model_copy(update={"chunk_size": 8, "topk_per_chunk": 16})})


HP = scenario_hparams()


@dataclass
class Net:
    """One backend with the late subnet on it. ``move_head_to(b, after)`` makes block b the head,
    produced ``after`` seconds ago (the devchain by moving its genesis; the fake by setting its head
    and anchoring its timestamps to now)."""

    kind: str
    chain: Chain
    move_head_to: Callable[[int, float], None]
    fake: FakeSubstrate | None = None
    devchain: DevChain | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)


def _devchain(tmp_path: Path) -> Net:
    # 20 % of slots missed and up to 0.3 s of author jitter: `tessera chain create --start-block
    # 5000000 --missed-slots 0.2 --block-jitter 0.3 --slot-seed 7`
    chain = DevChain.create(tmp_path / "chain.db", NETUID, DEVCHAIN_BLOCK_TIME, start_block=ORIGIN,
                            missed_slots=0.2, jitter=0.3, seed=7)
    chain.wait_for_inclusion = False  # the test moves the clock itself

    def move_head_to(block: int, after: float) -> None:
        # blocks come from the wall clock: move genesis so that `block` was stamped `after` s ago
        slots = chain.slots
        far = slots.genesis + 20 * (block - ORIGIN + 10) * slots.block_time  # every block up to `block` produced
        shift = time.time() - after - slots.timestamp(block, far)
        chain.genesis += shift
        slots.genesis += shift
        assert chain.block() >= block

    for i, signer in enumerate(SIGNERS):
        chain.register(signer, f"cold{i}", stake=STAKES.get(signer, 0.0))
    move_head_to(ORIGIN + 2, 0.1)
    return Net("devchain", chain, move_head_to, devchain=chain)


def _bittensor(tmp_path: Path, monkeypatch) -> Net:
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp_path / "symbols.json"))
    neurons = [
        {"hotkey": s.hotkey, "coldkey": f"5Cold{i}", "permit": s in STAKES,  # permits: top-k by stake
         "stake_rao": int(STAKES.get(s, 0.0) * 10**9), "incentive_u16": 0}
        for i, s in enumerate(SIGNERS)
    ]
    fake = FakeSubstrate(NETUID, neurons, head=ORIGIN + 2, registered_at=ORIGIN)
    fake.rules.weights_rate_limit = 0

    def move_head_to(block: int, after: float) -> None:
        fake.head = block
        fake.genesis_ms += round((time.time() - after) * 1000) - fake.timestamp_ms(block)

    move_head_to(ORIGIN + 2, 0.1)
    chain = BittensorChain("finney", NETUID, substrate=fake)
    return Net("bittensor", chain, move_head_to, fake=fake, closers=[chain.close])


@pytest.fixture(params=["devchain", "bittensor"])
def net(request, tmp_path, monkeypatch):
    made = _devchain(tmp_path) if request.param == "devchain" else _bittensor(tmp_path, monkeypatch)
    yield made
    for close in made.closers:
        close()


class OriginGuard(Chain):
    """The backend as a node sees it, recording every block a read is pinned to; a read from before
    the origin is refused, as the SDK refuses to read a subnet before it existed."""

    def __init__(self, inner: Chain, origin: int):
        self.inner, self.origin, self.netuid = inner, origin, inner.netuid
        self.pinned: list[tuple[str, int]] = []

    def _pin(self, what: str, block: int | None) -> None:
        if block is None:
            return
        self.pinned.append((what, block))
        if block < self.origin:
            raise ChainError(f"{what} at block {block}, before the run's origin {self.origin}")

    def block(self) -> int:
        return self.inner.block()

    def block_time(self) -> float:
        return self.inner.block_time()

    def block_timestamp(self, block: int) -> float:
        self._pin("block_timestamp", block)
        return self.inner.block_timestamp(block)

    def metagraph(self, block: int | None = None) -> Metagraph:
        self._pin("metagraph", block)
        return self.inner.metagraph(block)

    def commitments(self, block: int | None = None) -> dict[int, str]:
        self._pin("commitments", block)
        return self.inner.commitments(block)

    def commit(self, signer: Signer, data: str) -> None:
        self.inner.commit(signer, data)

    def set_weights(self, signer: Signer, weights: dict[int, float], version_key: int = 0) -> None:
        self.inner.set_weights(signer, weights, version_key)

    def weights_policy(self, uid: int) -> WeightsPolicy:
        return self.inner.weights_policy(uid)

    def is_registered(self, hotkey: str) -> bool:
        return self.inner.is_registered(hotkey)


# --- a subnet registered at block 5,000,000 --------------------------------------------------------


def _node(net: Net, chain: Chain, tmp_path: Path, signer: HotkeySigner, uid: int):
    bucket = BucketConfig(endpoint_url="http://127.0.0.1:9", name="unused", write_key_id="w", write_secret="ws",
                          read_key_id="r", read_secret="rs")
    where = {"devchain": net.devchain.path} if net.devchain is not None else {"network": "finney"}
    config = NodeConfig(role="miner", netuid=NETUID, bucket=bucket, state_dir=tmp_path / "state", **where)
    origin = RunOrigin(start_block=ORIGIN, hparams_digest=hparams_digest(HP), data_digest="d" * 64, tokenizer="t")
    return assemble_node(config, HP, chain, signer, uid, LocalStore(tmp_path / "own"), threading.Event(), origin)


def test_a_subnet_started_at_block_5_000_000_starts_its_nodes_at_the_origin(net, tmp_path, caplog):
    bpw = HP.window.blocks_per_window
    net.move_head_to(ORIGIN + 12 * bpw + 6, 0.2)  # 6 blocks (>= 6 s) into window 12 of the run
    guard = OriginGuard(net.chain, ORIGIN)
    node = _node(net, guard, tmp_path, PAID, PAID_UID)
    head = guard.block()
    assert node.clock.current_window() == (head - ORIGIN) // bpw == 12  # not head // bpw (500,012)

    start_window(node)  # no local state, no checkpoint: θ0 at window 0, which begins at the origin
    assert node.window == 0 and node.clock.first_block(0) == ORIGIN
    catch_up(node)  # replays windows 0..11 from their first blocks
    assert node.window == node.clock.current_window() == 12
    assert node.window * HP.training.inner_steps == 96  # the global step training resumes at: small

    blocks = [b for _, b in guard.pinned]
    assert min(blocks) == ORIGIN  # window 0's first block: read, and nothing before it
    assert {b for what, b in guard.pinned if what == "metagraph"} == {ORIGIN + w * bpw for w in range(12)}
    if net.fake is not None:  # every read the SDK itself made, pinned below the origin or not
        pinned = [int(h, 16) for _, _, h in net.fake.reads if h is not None]
        assert pinned and min(pinned) >= ORIGIN
    with caplog.at_level("WARNING"):
        warn_if_excluded(node)  # the paid miner, stake and permit held, is not told it is excluded
    assert "excluded" not in caplog.text

    # both backends refuse a read of the subnet before it existed, as the SDK does
    with pytest.raises(ChainError, match="does not exist"):
        net.chain.metagraph(ORIGIN - 1)
    with pytest.raises(ChainError, match="before the run's origin"):
        guard.metagraph(ORIGIN - 1)


# --- the paid miner, and the upload slot under missed slots ---------------------------------------


class Buckets:
    """Each miner's bucket is a LocalStore behind PeerDirectory's ``make_store`` seam."""

    def __init__(self, root: Path):
        self.root, self.stores = root, {}

    def commitment(self, signer: HotkeySigner) -> str:
        return BucketCommitment(endpoint_url="http://127.0.0.1:9", bucket=f"b-{signer.hotkey[:10].lower()}",
                                access_key_id="reader", secret_access_key="s").encode()

    def open(self, c: BucketCommitment) -> LocalStore:
        return self.stores.setdefault(c.bucket, LocalStore(self.root / c.bucket))

    def upload(self, signer: HotkeySigner, uid: int, window: int, last_modified: float) -> None:
        """A signed payload of window ``window``, as the server would stamp it: whole seconds."""
        compressor = ErrorFeedbackCompressor(SHAPES, chunk_size=8, topk_per_chunk=16)
        gen = torch.Generator().manual_seed(uid)
        message = compressor.compress({n: torch.randn(s, generator=gen) * 0.01 for n, s in SHAPES.items()})
        manifest = PayloadManifest.for_message(message, run_id=HP.run_id, window=window, uid=uid,
                                               hotkey=signer.hotkey, global_step=0)
        store = self.open(BucketCommitment.decode(self.commitment(signer)))
        key = payload_key(HP.run_id, window, uid)
        store.put(key, encode_payload(message, manifest, sign=signer.sign))
        # a LocalStore's LastModified is its file's mtime (storage.local)
        path = store.root / "objects" / quote(key, safe="")
        os.utime(path, ns=(math.floor(last_modified) * 10**9,) * 2)


def _commit_buckets(net: Net, buckets: Buckets) -> None:
    for signer in (MINER, PAID, MINER_C):
        net.chain.commit(signer, buckets.commitment(signer))


def test_a_paid_miner_with_stake_and_permit_stays_a_miner_gathered_and_scored(net, tmp_path):
    buckets = Buckets(tmp_path)
    _commit_buckets(net, buckets)
    net.chain.set_weights(VALIDATOR, {2: 0.2, 3: 0.5, 4: 0.3})
    clock = WindowClock(net.chain, HP.window.blocks_per_window, HP.window.upload_slot_seconds, ORIGIN)
    w = clock.current_window() + 1  # a window that begins after the writes above
    net.move_head_to(clock.first_block(w + 1) + 1, 0.1)  # w's slot has opened

    at_start = net.chain.metagraph(clock.first_block(w))
    paid = at_start.by_uid(PAID_UID)
    assert paid.validator_permit and paid.stake == pytest.approx(12.0)  # what the chain gives a paid miner
    assert role_of(at_start, PAID_UID, HP, OWNER_UID).role == "miner"
    scored = [u for u in miner_uids(at_start, HP) if u != VAL_UID]  # the validator's candidates (one_window)
    assert scored == [2, 3, 4]

    slot = clock.upload_slot(w)
    for signer, uid in ((MINER, 2), (PAID, 3), (MINER_C, 4)):
        buckets.upload(signer, uid, w, Behaviour().upload_times(*slot)[0])
    peers = PeerDirectory(net.chain, buckets.open)
    gathered = gather_window(net.chain, clock, peers, HP, SHAPES, w, also_fetch=scored)
    assert gathered.gather_set.gather[0] == PAID_UID  # ranked first by the validator's weight
    assert gathered.accepted == [3, 4, 2]
    assert set(gathered.fetched) == {2, 3, 4} and gathered.fetched[PAID_UID].ok  # fetched for stage 1

    # a node the rule leaves out of its role is told why
    assert excluded_reason(at_start, PAID_UID, HP, OWNER_UID, "miner") is None
    as_miner = excluded_reason(at_start, VAL_UID, HP, OWNER_UID, "miner")
    assert as_miner is not None and "uid 1 sets weights with a permit" in as_miner
    as_validator = excluded_reason(at_start, MINER_UID, HP, OWNER_UID, "validator")
    assert as_validator is not None and "holds no validator permit" in as_validator


def _block_after_missed_slots(net: Net, clock: WindowClock) -> int:
    """The first block of some window w+1 before which at least two slots were missed."""
    bpw = clock.blocks_per_window
    if net.fake is not None:
        block = clock.first_block(clock.current_window() + 2)
        net.fake.missed[block] = 2  # two authors in a row missed their slot
        net.fake.jitter_ms[block] = 300
        return block
    slots = net.devchain.slots
    for w in range(1, 2000):  # the seeded schedule: deterministic for this devchain
        block = clock.first_block(w)
        far = slots.genesis + 20 * (block - ORIGIN + 10) * slots.block_time
        if block > net.chain.block() + 1 and slots.timestamp(block, far) - slots.timestamp(block - 1, far) >= 3 * slots.block_time:
            return block
    raise AssertionError(f"no window of {bpw} blocks opens after two missed slots")


def test_with_missed_slots_the_upload_slot_follows_the_real_block_and_an_honest_upload_counts(net, tmp_path):
    buckets = Buckets(tmp_path)
    _commit_buckets(net, buckets)
    clock = WindowClock(net.chain, HP.window.blocks_per_window, HP.window.upload_slot_seconds, ORIGIN)
    opener = _block_after_missed_slots(net, clock)
    w = clock.window_of(opener) - 1
    block_time = net.chain.block_time()

    net.move_head_to(opener - 1, 0.1)  # the block before w+1's first: the slot's start is not known yet
    assert not clock.block_opened(w + 1)
    predicted = clock.upload_slot(w).start - net.chain.block_timestamp(opener - 1)
    assert predicted == pytest.approx(block_time)  # a prediction assumes no slot is missed

    net.move_head_to(opener + 1, 0.1)  # the block exists now, later than predicted
    assert clock.block_opened(w + 1)
    before = net.chain.block_timestamp(opener - 1)
    slot = clock.upload_slot(w)
    assert slot.start == net.chain.block_timestamp(opener)  # the real block's own timestamp
    assert slot.start - before >= 3 * block_time - 1e-6  # two slots missed in between

    honest = Behaviour().upload_times(*slot)[0]  # right after the block, at the first whole second
    assert check_slot(math.floor(honest), slot.start, HP.window.upload_slot_seconds) is None
    too_early = Behaviour().upload_times(before + predicted, before + predicted + 3.0)[0]  # the predicted slot
    rejection = check_slot(math.floor(too_early), slot.start, HP.window.upload_slot_seconds)
    assert rejection is not None and rejection.reason == RejectReason.EARLY

    for signer, uid in ((MINER, 2), (PAID, 3), (MINER_C, 4)):
        buckets.upload(signer, uid, w, honest)
    gathered = gather_window(net.chain, clock, PeerDirectory(net.chain, buckets.open), HP, SHAPES, w)
    assert gathered.accepted == [2, 3, 4], {u: f.result.reason for u, f in gathered.fetched.items()}


def test_twenty_percent_missed_slots_lose_no_honest_upload(net):
    clock = WindowClock(net.chain, HP.window.blocks_per_window, HP.window.upload_slot_seconds, ORIGIN)
    if net.fake is not None:  # the devchain's schedule already misses 20 % of its slots
        rng = random.Random(7)
        for block in range(ORIGIN + 1, ORIGIN + 400):
            if rng.random() < 0.2:
                net.fake.missed[block] = 1
            net.fake.jitter_ms[block] = rng.randrange(300)
    block_time, lost, gaps = net.chain.block_time(), [], []
    first = clock.current_window() + 1
    for w in range(first, first + 25):
        opener = clock.first_block(w + 1)
        net.move_head_to(opener, 0.05)  # a miner has just seen the block that opens w+1
        slot = clock.upload_slot(w)
        assert slot.start == net.chain.block_timestamp(opener)
        put = Behaviour().upload_times(*slot)[0]
        if check_slot(math.floor(put), slot.start, HP.window.upload_slot_seconds) is not None:
            lost.append(w)
        gaps.append(slot.start - net.chain.block_timestamp(opener - 1))
    assert lost == []
    assert max(gaps) >= 2 * block_time - 1e-6  # some windows opened after a missed slot


# --- timestamps of blocks that do not exist yet ----------------------------------------------------


def test_a_future_blocks_timestamp_is_a_prediction_never_an_sdk_error(net):
    head = net.chain.block()
    predicted = net.chain.block_timestamp(head + 5)
    assert predicted == pytest.approx(net.chain.block_timestamp(head) + 5 * net.chain.block_time())


def test_bittensor_a_block_the_node_cannot_resolve_is_a_typed_chain_error(tmp_path, monkeypatch):
    net = _bittensor(tmp_path, monkeypatch)
    try:
        head = net.chain.block()
        with pytest.raises(ChainError) as pinned_future:
            net.chain.metagraph(head + 5)  # a read pinned to a block the node has not produced
        with pytest.raises(ChainError):
            net.chain.block_timestamp(-1)

        async def ahead() -> int:  # an RPC pool whose head is one block ahead of the node answering
            return net.fake.head + 1

        monkeypatch.setattr(net.fake, "block_number", ahead)
        with pytest.raises(ChainError, match="no block at height") as raced:
            net.chain.block_timestamp(head + 1)
        for caught in (pinned_future.value, raced.value):
            assert not isinstance(caught, bittensor.BittensorError)  # ours, never the SDK's own
    finally:
        net.chain.close()


def test_the_fake_substrate_stamps_missed_slots_and_jitter():
    fake = FakeSubstrate(NETUID, [], head=100)
    base = fake.timestamp_ms(50)
    fake.missed[60] = 2
    fake.jitter_ms[60] = 250
    assert fake.timestamp_ms(59) == base + 9 * fake_substrate.BLOCK_MS
    assert fake.timestamp_ms(60) == base + 12 * fake_substrate.BLOCK_MS + 250
    assert fake.timestamp_ms(61) == base + 13 * fake_substrate.BLOCK_MS

"""Fetching one peer's payload: every check any node can make alone, each failure a typed reason.

Payloads are real (error feedback + SparseLoCo + signed wire format); the bucket is a LocalStore
whose LastModified (the file's mtime) is set explicitly, so slot checks do not depend on timing.
"""

from __future__ import annotations

import functools
import json
import random
import struct
import time
from dataclasses import replace

import pytest
import torch

from compression import content_hash, decode_payload
from neurons.fetch import FetchedPayload, fetch_many, fetch_payload
from neurons.peers import Peer, PeerDirectory
from protocol.acceptance import AcceptanceRule, RejectReason
from protocol.commitment import BucketCommitment
from protocol.keys import payload_key
from protocol.signing import HotkeySigner
from storage import AccessDenied, StorageUnavailable
from storage.local import LocalStore

RUN = "tiny-aaaaaaaaaaaa"
W = 5
SLOT_START = 1_700_000_000.0
SLOT_SECONDS = 3.0
IN_SLOT = SLOT_START + 1.0
MAX_BYTES = 4096
RULE = AcceptanceRule(run_id=RUN, window=W, slot_start=SLOT_START, slot_seconds=SLOT_SECONDS, max_bytes=MAX_BYTES)


@functools.cache
def signer(i: int) -> HotkeySigner:
    return HotkeySigner.from_uri(f"//FetchTest{i}")


class RecordingStore(LocalStore):
    """A LocalStore that remembers which keys were downloaded (to prove HEAD-before-GET)."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.downloaded: list[str] = []

    def get(self, key: str, max_bytes: int, *, deadline: float | None = None) -> bytes:
        self.downloaded.append(key)
        return super().get(key, max_bytes, deadline=deadline)


class UnreachableStore(LocalStore):
    """A bucket whose server fails on ``fail_on`` ('head' or 'get')."""

    def __init__(self, root, fail_on: str) -> None:
        super().__init__(root)
        self.fail_on = fail_on

    def head(self, key: str, *, deadline: float | None = None):
        if self.fail_on == "head":
            raise StorageUnavailable(f"head {key}: connection refused")
        if self.fail_on == "denied":
            raise AccessDenied(f"head {key}: 403 Forbidden")
        return super().head(key, deadline=deadline)

    def get(self, key: str, max_bytes: int, *, deadline: float | None = None) -> bytes:
        if self.fail_on == "get":
            raise StorageUnavailable(f"get {key}: connection reset")
        return super().get(key, max_bytes, deadline=deadline)


@pytest.fixture
def store(tmp_path) -> RecordingStore:
    return RecordingStore(tmp_path / "bucket")


@pytest.fixture
def honest(make_payload) -> bytes:
    return make_payload(signer(1), uid=1, window=W, run_id=RUN)


@pytest.fixture
def upload(stamp):
    def put(store: LocalStore, data: bytes, *, uid: int = 1, window: int = W, when: float = IN_SLOT) -> str:
        key = payload_key(RUN, window, uid)
        store.put(key, data)
        stamp(store, key, when)
        return key

    return put


def fetch(store, shapes, uid: int = 1, who: int | None = None, rule: AcceptanceRule = RULE) -> FetchedPayload:
    """Fetch uid's payload from ``store``, the uid's hotkey on chain being signer(who or uid)."""
    return fetch_payload(Peer(uid, signer(uid if who is None else who).hotkey, store), rule, shapes)


def assert_rejected(got: FetchedPayload, reason: RejectReason) -> None:
    assert not got.ok and got.decoded is None
    assert not got.result.passed and got.result.reason == reason, got.result


def resign(data: bytes, by: HotkeySigner, mutate) -> bytes:
    """``data`` with its tensor bytes changed by ``mutate`` and a fresh, valid signature by ``by``:
    what a malicious miner can send (the wire layout is in compression/wire.py's docstring)."""
    (n,) = struct.unpack("<Q", data[:8])
    raw_header, body = data[8 : 8 + n], bytearray(data[8 + n :])
    meta = json.loads(raw_header)["__metadata__"]
    mutate(body)
    sig = by.sign(content_hash(meta["manifest"], {"update": bytes(body)})).hex()
    return data[:8] + raw_header.replace(meta["sig"].encode(), sig.encode()) + bytes(body)


# --- accepted ------------------------------------------------------------------------------------


def test_an_honest_payload_is_accepted_and_decoded(store, upload, honest, tiny_shapes):
    upload(store, honest)
    got = fetch(store, tiny_shapes)

    assert got.ok and got.result.passed and got.result.reason is None
    assert got.size == got.downloaded == len(honest)
    assert got.last_modified == pytest.approx(IN_SLOT, abs=1e-3)
    m = got.decoded.manifest
    assert (m.run_id, m.window, m.uid, m.hotkey) == (RUN, W, 1, signer(1).hotkey)
    reference = decode_payload(honest, tiny_shapes, MAX_BYTES).update
    assert set(got.decoded.update) == set(tiny_shapes)
    for name, sparse in reference.items():
        assert torch.equal(got.decoded.update[name].indices, sparse.indices)
        assert torch.equal(got.decoded.update[name].values, sparse.values)


# SLOT_START - 0.5: a whole-second LastModified of an upload that finished just after the slot opened
@pytest.mark.parametrize("when", [SLOT_START - 0.5, SLOT_START, SLOT_START + SLOT_SECONDS])
def test_the_slot_includes_both_ends(store, upload, honest, tiny_shapes, when):
    upload(store, honest, when=when)
    assert fetch(store, tiny_shapes).ok


# --- rejected before download --------------------------------------------------------------------


def test_a_missing_payload_is_missing(store, upload, honest, tiny_shapes):
    upload(store, honest, window=W + 1)  # the next window's upload is not this window's
    got = fetch(store, tiny_shapes)
    assert_rejected(got, RejectReason.MISSING)
    assert got.size == 0 and store.downloaded == []


@pytest.mark.parametrize(
    ("when", "reason"),
    [
        (SLOT_START - 1.0, RejectReason.EARLY),
        (SLOT_START + SLOT_SECONDS + 0.5, RejectReason.LATE),
        (SLOT_START + 3600, RejectReason.LATE),
    ],
)
def test_an_upload_outside_the_slot_is_rejected_without_download(store, upload, honest, tiny_shapes, when, reason):
    upload(store, honest, when=when)
    got = fetch(store, tiny_shapes)
    assert_rejected(got, reason)
    assert got.last_modified == pytest.approx(when, abs=1e-3)
    assert store.downloaded == []


def test_an_oversize_object_is_rejected_by_its_size_before_download(store, upload, tiny_shapes):
    upload(store, b"\0" * (MAX_BYTES + 1))
    got = fetch(store, tiny_shapes)
    assert_rejected(got, RejectReason.OVERSIZED)
    assert got.size == MAX_BYTES + 1 and got.downloaded == 0  # a HEAD claim, nothing moved
    assert store.downloaded == []


def test_a_valid_payload_over_the_cap_is_oversized(store, upload, honest, tiny_shapes):
    upload(store, honest)
    got = fetch(store, tiny_shapes, rule=replace(RULE, max_bytes=len(honest) - 1))
    assert_rejected(got, RejectReason.OVERSIZED)
    assert store.downloaded == []
    assert fetch(store, tiny_shapes, rule=replace(RULE, max_bytes=len(honest))).ok


# --- rejected after download ---------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 7, 8, 60, -200, -1])
def test_a_truncated_payload_is_undecodable(store, upload, honest, tiny_shapes, keep):
    upload(store, honest[:keep] if keep >= 0 else honest[: len(honest) + keep])
    assert_rejected(fetch(store, tiny_shapes), RejectReason.UNDECODABLE)


def test_a_flipped_byte_in_the_tensor_data_breaks_the_signature(store, upload, honest, tiny_shapes):
    flipped = bytearray(honest)
    flipped[-10] ^= 0x01
    upload(store, bytes(flipped))
    assert_rejected(fetch(store, tiny_shapes), RejectReason.BAD_SIGNATURE)


def test_no_single_byte_flip_is_accepted_or_raises(tmp_path, stamp, honest, tiny_shapes):
    store = LocalStore(tmp_path / "flips")
    key = payload_key(RUN, W, 1)
    for pos in range(0, len(honest), 3):
        flipped = bytearray(honest)
        flipped[pos] ^= 0xFF
        store.put(key, bytes(flipped))
        stamp(store, key, IN_SLOT)
        got = fetch(store, tiny_shapes)
        assert not got.ok, f"flip at byte {pos} was accepted"
        assert got.result.reason in (RejectReason.UNDECODABLE, RejectReason.BAD_SIGNATURE), (pos, got.result)
        store.delete(key)


@pytest.mark.parametrize("make", ["signed by another key", "unsigned", "copied from uid 2"])
def test_a_payload_not_signed_by_the_uids_hotkey_is_rejected(store, upload, make_payload, tiny_shapes, make):
    if make == "signed by another key":
        data = make_payload(signer(2), uid=1, window=W, run_id=RUN, hotkey=signer(1).hotkey)
    elif make == "unsigned":
        data = make_payload(signer(1), uid=1, window=W, run_id=RUN, sign=False)
    else:  # uid 1 re-uploads uid 2's signed payload as its own
        data = make_payload(signer(2), uid=2, window=W, run_id=RUN)
    upload(store, data)
    assert_rejected(fetch(store, tiny_shapes), RejectReason.BAD_SIGNATURE)


@pytest.mark.parametrize(
    "manifest",
    [
        {"window": W - 1},  # last window's payload re-uploaded under this window's key
        {"window": W + 1},
        {"run_id": "tiny-bbbbbbbbbbbb"},  # another run's payload
        {"uid": 2},  # signed by uid 1's hotkey, but naming another uid
        {"hotkey": "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"},  # naming another hotkey
    ],
)
def test_a_manifest_for_another_window_run_or_uid_is_rejected(store, upload, make_payload, tiny_shapes, manifest):
    fields = {"uid": 1, "window": W, "run_id": RUN, **manifest}
    upload(store, make_payload(signer(1), **fields))
    got = fetch(store, tiny_shapes)
    assert_rejected(got, RejectReason.WRONG_WINDOW)
    assert got.size > 0  # it was downloaded and verified, then refused for what it says


def test_a_payload_for_other_shapes_is_undecodable(store, upload, make_payload, tiny_shapes):
    upload(store, make_payload(signer(1), uid=1, window=W, run_id=RUN, shapes={"weight": (16, 32), "bias": (16,)}))
    assert_rejected(fetch(store, tiny_shapes), RejectReason.UNDECODABLE)


def test_signed_garbage_is_rejected_never_raised(tmp_path, stamp, honest, tiny_shapes):
    """A miner can sign anything: a random body, validly signed, must be refused as undecodable."""
    store = LocalStore(tmp_path / "garbage")
    key = payload_key(RUN, W, 1)
    for seed in range(20):
        rng = random.Random(seed)

        def scramble(body: bytearray, rng=rng) -> None:
            body[:] = bytes(rng.randrange(256) for _ in body)

        store.put(key, resign(honest, signer(1), scramble))
        stamp(store, key, IN_SLOT)
        assert_rejected(fetch(store, tiny_shapes), RejectReason.UNDECODABLE)
        store.delete(key)


def test_signed_small_corruptions_are_decoded_or_refused_never_raised(tmp_path, stamp, honest, tiny_shapes):
    store = LocalStore(tmp_path / "corrupt")
    key = payload_key(RUN, W, 1)
    outcomes = set()
    for seed in range(40):
        rng = random.Random(seed)

        def poke(body: bytearray, rng=rng) -> None:
            for _ in range(rng.randrange(1, 4)):
                body[rng.randrange(len(body))] ^= 1 << rng.randrange(8)

        store.put(key, resign(honest, signer(1), poke))
        stamp(store, key, IN_SLOT)
        got = fetch(store, tiny_shapes)
        outcomes.add(got.result.reason)
        assert got.ok or got.result.reason == RejectReason.UNDECODABLE, got.result
        if got.ok:  # whatever decoded must still fit the local model exactly
            assert {n: tuple(s.shape) for n, s in got.decoded.update.items()} == tiny_shapes
        store.delete(key)
    assert RejectReason.UNDECODABLE in outcomes  # the corruptions did reach the decoder's checks


@pytest.mark.parametrize(("fail_on", "detail"), [
    ("head", "unreachable"), ("get", "download failed"), ("denied", "access denied: the committed read key"),
])
def test_an_unreachable_bucket_counts_as_missing(tmp_path, stamp, honest, tiny_shapes, fail_on, detail):
    store = UnreachableStore(tmp_path / "down", fail_on="none")
    key = payload_key(RUN, W, 1)
    store.put(key, honest)
    stamp(store, key, IN_SLOT)
    store.fail_on = fail_on
    got = fetch(store, tiny_shapes)
    assert_rejected(got, RejectReason.MISSING)
    assert detail in got.result.detail


# --- several peers -------------------------------------------------------------------------------


def _commitment(bucket: str) -> str:
    return BucketCommitment(endpoint_url="http://127.0.0.1:9", bucket=bucket, access_key_id="reader",
                            secret_access_key="read-secret").encode()


def test_fetch_many_reports_every_uid_whatever_the_order(devchain, tmp_path, upload, make_payload, tiny_shapes):
    stores: dict[str, RecordingStore] = {}

    def make_store(c: BucketCommitment) -> RecordingStore:
        return stores.setdefault(c.bucket, RecordingStore(tmp_path / c.bucket))

    for i in range(4):
        assert devchain.register(signer(i), signer(100 + i).hotkey) == i
    for i in (1, 2, 3):  # uid 0 commits no bucket
        devchain.commit(signer(i), _commitment(f"bucket-{i}"))
    peers = PeerDirectory(devchain, make_store)
    peers.refresh(devchain.metagraph())
    upload(stores["bucket-1"], make_payload(signer(1), uid=1, window=W, run_id=RUN))
    upload(stores["bucket-3"], make_payload(signer(3), uid=3, window=W, run_id=RUN, seed=3), uid=3)

    verdicts = []
    for order in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        got = fetch_many(peers, order, RULE, tiny_shapes)
        assert sorted(got) == [0, 1, 2, 3]
        verdicts.append({uid: (f.ok, f.result.reason, f.size) for uid, f in got.items()})
    assert verdicts[0] == verdicts[1] == verdicts[2]
    assert verdicts[0][1][0] and verdicts[0][3][0]
    assert verdicts[0][2][:2] == (False, RejectReason.MISSING)
    assert verdicts[0][0][:2] == (False, RejectReason.MISSING)
    assert "no bucket commitment" in fetch_many(peers, [0], RULE, tiny_shapes)[0].result.detail


# --- deadlines: a slow peer costs only its own slot ------------------------------------------------


def test_one_honest_and_three_stalling_peers_close_on_time(tmp_path, upload, make_payload, tiny_shapes):
    """The issue's measurement: dripping, header-dripping and hanging S3 servers (real HTTP on
    127.0.0.1) next to one honest bucket; the window's fetch ends at its deadline, not theirs."""
    from storage.endpoints import EndpointPolicy
    from storage.s3 import S3Store
    from tests.storage.hostile_server import HostileServer

    good_date_unix = 1_735_689_600.0  # the servers' Last-Modified (hostile_server.GOOD_DATE)

    budget, stall = 2.0, 30.0
    rule = replace(RULE, slot_start=good_date_unix - 1.0)  # the servers' LastModified is on time: GET happens
    honest_store = RecordingStore(tmp_path / "honest")
    upload(honest_store, make_payload(signer(1), uid=1, window=W, run_id=RUN), when=good_date_unix)
    modes = {2: "drip", 3: "drip_headers", 4: "hang"}
    servers = {uid: HostileServer(mode, stall_seconds=stall, drip_interval=0.5) for uid, mode in modes.items()}

    class Peers:
        def __init__(self, stores):
            self.stores = stores

        def get(self, uid):
            return Peer(uid, signer(uid).hotkey, self.stores[uid])

    with servers[2], servers[3], servers[4]:
        stores = {1: honest_store}
        for uid, server in servers.items():
            stores[uid] = S3Store(server.url, "bucket", "reader", "secret", policy=EndpointPolicy(allow_loopback=True))
        started = time.monotonic()
        got = fetch_many(Peers(stores), [1, 2, 3, 4], rule, tiny_shapes, budget_seconds=budget)
        elapsed = time.monotonic() - started
    print(f"fetch_many with 3 stalling peers: {elapsed:.2f} s for a {budget:.1f} s budget")
    assert got[1].ok
    for uid in modes:
        assert_rejected(got[uid], RejectReason.MISSING)
    assert elapsed < budget + 4.0, elapsed  # the stalls would last 30 s each; room for a loaded machine

"""Peers from chain commitments: each valid bucket commitment becomes a reader for that uid; a
malformed or unusable one is skipped with one logged reason; stores are reused until a peer
re-commits; nothing a commitment holds makes refresh raise."""

from __future__ import annotations

import functools
import logging
import socket
import string
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neurons.peers import RETRY_REFUSED_EVERY, PeerDirectory, read_only_store
from protocol.commitment import BucketCommitment
from protocol.signing import HotkeySigner
from storage.endpoints import EndpointPolicy
from storage.errors import EndpointRefused
from storage.local import LocalStore
from storage.s3 import S3Store


@functools.cache
def signer(i: int) -> HotkeySigner:
    return HotkeySigner.from_uri(f"//PeersTest{i}")


def commitment(bucket: str, key_id: str = "reader") -> str:
    return BucketCommitment(endpoint_url="http://127.0.0.1:9", bucket=bucket, access_key_id=key_id,
                            secret_access_key="read-secret").encode()


@pytest.fixture
def opened(tmp_path):
    """The make_store seam: a LocalStore per commitment, and a log of what was opened."""
    log: list[BucketCommitment] = []

    def make_store(c: BucketCommitment) -> LocalStore:
        log.append(c)
        return LocalStore(tmp_path / f"{c.bucket}-{c.access_key_id}")

    return make_store, log


def register(chain, n: int) -> None:
    for i in range(n):
        assert chain.register(signer(i), signer(50 + i).hotkey) == i


def test_each_committed_uid_becomes_a_peer_with_its_hotkey(devchain, opened):
    make_store, log = opened
    register(devchain, 3)
    devchain.commit(signer(2), commitment("bucket-two"))
    devchain.commit(signer(0), commitment("bucket-zero"))

    peers = PeerDirectory(devchain, make_store)
    peers.refresh(devchain.metagraph())

    assert [p.uid for p in peers] == [0, 2]  # sorted by uid; uid 1 committed nothing
    assert peers.get(1) is None and peers.get(7) is None
    assert peers.get(2).hotkey == signer(2).hotkey
    assert peers.get(0).store.root.name == "bucket-zero-reader"
    assert sorted(c.bucket for c in log) == ["bucket-two", "bucket-zero"]


def test_a_malformed_commitment_is_skipped_with_a_reason(devchain, opened, caplog):
    make_store, _ = opened
    register(devchain, 4)
    devchain.commit(signer(0), commitment("good-bucket"))
    devchain.commit(signer(1), "not a commitment")
    devchain.commit(signer(2), "1http://x,bucket")  # right version, too few fields
    devchain.commit(signer(3), "1ftp://x,Bad_Bucket,,k,s")  # five fields, invalid values

    peers = PeerDirectory(devchain, make_store)
    with caplog.at_level(logging.WARNING, logger="neurons.peers"):
        peers.refresh(devchain.metagraph())

    assert [p.uid for p in peers] == [0]
    warned = " ".join(r.getMessage() for r in caplog.records)
    for uid in (1, 2, 3):
        assert f"uid {uid} has a malformed bucket commitment" in warned


def test_only_registered_uids_are_peers(devchain, opened):
    make_store, _ = opened
    register(devchain, 2)
    devchain.commit(signer(1), commitment("bucket-one"))
    earlier = devchain.metagraph(0)  # before anyone registered
    peers = PeerDirectory(devchain, make_store)
    peers.refresh(earlier)
    assert list(peers) == []
    peers.refresh(devchain.metagraph())
    assert [p.uid for p in peers] == [1]


def test_stores_are_reused_until_a_peer_recommits(devchain, opened):
    make_store, log = opened
    register(devchain, 2)
    devchain.commit(signer(0), commitment("bucket-zero"))
    devchain.commit(signer(1), commitment("bucket-one"))
    peers = PeerDirectory(devchain, make_store)
    peers.refresh(devchain.metagraph())
    first = {p.uid: p.store for p in peers}

    peers.refresh(devchain.metagraph())
    assert {p.uid: p.store for p in peers} == first and len(log) == 2  # nothing reopened

    devchain.commit(signer(1), commitment("bucket-one", key_id="rotated"))  # key rotation
    peers.refresh(devchain.metagraph())
    assert peers.get(0).store is first[0]
    assert peers.get(1).store is not first[1]
    assert peers.get(1).store.root.name == "bucket-one-rotated"
    assert len(log) == 3


def test_a_commitment_that_turns_malformed_drops_the_peer(devchain, opened):
    make_store, _ = opened
    register(devchain, 1)
    devchain.commit(signer(0), commitment("bucket-zero"))
    peers = PeerDirectory(devchain, make_store)
    peers.refresh(devchain.metagraph())
    assert peers.get(0) is not None
    devchain.commit(signer(0), "garbage")
    peers.refresh(devchain.metagraph())
    assert peers.get(0) is None


def test_read_only_store_uses_the_committed_bucket_and_keys():
    c = BucketCommitment(endpoint_url="http://127.0.0.1:9", bucket="peer-bucket", region="us-east-1",
                         access_key_id="reader", secret_access_key="read-secret")
    with pytest.raises(EndpointRefused, match="loopback"):  # a real network refuses loopback
        read_only_store(c)
    store = read_only_store(c, EndpointPolicy(allow_loopback=True))
    assert isinstance(store, S3Store)
    assert (store.endpoint_url, store.bucket, store.region, store.access_key_id) == (
        "http://127.0.0.1:9", "peer-bucket", "us-east-1", "reader",
    )
    assert "read-secret" not in repr(store)


class FakeChain:
    """Just what PeerDirectory reads: commitments by uid (any text, as a hostile chain holds)."""

    def __init__(self, texts: dict[int, str]) -> None:
        self.texts = texts

    def commitments(self) -> dict[int, str]:
        return dict(self.texts)


def metagraph(n: int) -> SimpleNamespace:
    return SimpleNamespace(neurons=[SimpleNamespace(uid=i, hotkey=f"hk{i}") for i in range(n)])


def good(bucket: str, endpoint: str = "http://127.0.0.1:9") -> str:
    return BucketCommitment(endpoint_url=endpoint, bucket=bucket, access_key_id="reader",
                            secret_access_key="read-secret").encode()


@pytest.fixture
def no_connections(monkeypatch):
    def refuse(*args, **_kwargs):
        pytest.fail(f"a connection was attempted: {args!r}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr("urllib3.util.connection.create_connection", refuse)


def test_the_node_allows_loopback_only_on_the_local_subnet(no_connections, caplog):
    chain = FakeChain({0: good("bucket-zero"), 1: good("bucket-one", "http://169.254.169.254")})
    local = PeerDirectory.for_node(chain, local_subnet=True)
    real = PeerDirectory.for_node(chain, local_subnet=False)
    with caplog.at_level(logging.WARNING, logger="neurons.peers"):
        local.refresh(metagraph(2))
        real.refresh(metagraph(2))
    assert [p.uid for p in local] == [0] and isinstance(local.get(0).store, S3Store)
    assert list(real) == []  # loopback refused on a real network; metadata refused everywhere
    warned = [r.getMessage() for r in caplog.records]
    assert any("uid 0" in m and "EndpointRefused" in m and "loopback" in m for m in warned)
    assert sum("uid 1" in m and "169.254.169.254" in m for m in warned) == 2


def test_a_refused_commitment_is_warned_once_and_retried_rarely(no_connections, caplog):
    chain = FakeChain({0: good("bucket-zero", "http://10.0.0.7:9000"), 1: good("bucket-one")})
    opened: list[str] = []

    def make_store(c: BucketCommitment):
        opened.append(c.bucket)
        return read_only_store(c, EndpointPolicy(allow_loopback=True))

    peers = PeerDirectory(chain, make_store)
    with caplog.at_level(logging.WARNING, logger="neurons.peers"):
        for _ in range(RETRY_REFUSED_EVERY + 1):
            peers.refresh(metagraph(2))
    assert [p.uid for p in peers] == [1]
    assert len([r for r in caplog.records if "uid 0" in r.getMessage()]) == 1
    assert opened.count("bucket-zero") == 2  # once, then once more after RETRY_REFUSED_EVERY refreshes

    chain.texts[0] = good("bucket-zero", "http://192.168.1.1")  # a new commitment is a new warning
    with caplog.at_level(logging.WARNING, logger="neurons.peers"):
        peers.refresh(metagraph(2))
    assert len([r for r in caplog.records if "uid 0" in r.getMessage()]) == 2

    chain.texts[0] = good("bucket-zero")  # fixed: the peer is back at once
    peers.refresh(metagraph(2))
    assert [p.uid for p in peers] == [0, 1]


@pytest.mark.parametrize("error", [KeyError("endpoint"), TypeError("bad"), RecursionError(), OSError("x")])
def test_any_failure_to_build_a_client_leaves_only_that_peer_out(error, caplog):
    chain = FakeChain({0: good("bucket-zero"), 1: good("bucket-one")})

    def make_store(c: BucketCommitment):
        if c.bucket == "bucket-zero":
            raise error
        return LocalStore("/tmp/unused-peers-test")  # never touched: only its presence matters

    peers = PeerDirectory(chain, make_store)
    with caplog.at_level(logging.WARNING, logger="neurons.peers"):
        peers.refresh(metagraph(2))
    assert [p.uid for p in peers] == [1]
    assert type(error).__name__ in caplog.text


_ASCII = st.text(alphabet=string.printable, max_size=24)


@given(st.dictionaries(
    st.integers(0, 3),
    st.one_of(
        st.text(max_size=130),
        st.builds(lambda parts: "1" + ",".join(parts), st.lists(_ASCII, min_size=5, max_size=5)),
        st.builds(lambda e, r: f"1{e},bucket,{r},key,secret",
                  st.from_regex(r"\Ahttps?://[\[\]:@a-z0-9.%-]{0,30}\Z"), _ASCII),
    ),
))
@settings(max_examples=60, deadline=None)
def test_hostile_commitments_never_break_refresh(texts):
    def fake_resolve(host, port, **_kwargs):  # public for every name: no real DNS, no connection
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("8.8.8.8", port))]

    peers = PeerDirectory(FakeChain(texts), lambda c: S3Store(
        c.endpoint_url, c.bucket, c.access_key_id, c.secret_access_key, c.region,
        policy=EndpointPolicy(), resolve=fake_resolve))
    peers.refresh(metagraph(4))
    peers.refresh(metagraph(4))
    assert all(p.uid in texts and isinstance(p.store, S3Store) for p in peers)


def test_a_peer_whose_store_opens_slowly_costs_only_itself(monkeypatch, tmp_path):
    """A name server that stalls (simulated: opening blocks) delays no refresh past its budget;
    the slow peer is absent until its store is ready, the others are there at once."""
    import threading
    import time

    import neurons.peers as peers_module

    monkeypatch.setattr(peers_module, "OPEN_BUDGET_SECONDS", 1.0)
    release = threading.Event()

    def make_store(c: BucketCommitment):
        if c.bucket.startswith("slow"):
            release.wait(10)
        return LocalStore(tmp_path / c.bucket)

    chain = FakeChain({0: good("fast-zero"), 1: good("slow-one"), 2: good("slow-two"), 3: good("fast-three")})
    peers = PeerDirectory(chain, make_store)
    started = time.monotonic()
    peers.refresh(metagraph(4))
    assert time.monotonic() - started < 5.0  # two stalls of 10 s, one budget of 1 s, concurrently
    assert [p.uid for p in peers] == [0, 3]
    started = time.monotonic()
    peers.refresh(metagraph(4))  # still pending: not waited for again
    assert time.monotonic() - started < 0.9 and [p.uid for p in peers] == [0, 3]  # waiting would take 1 s
    release.set()
    deadline = time.monotonic() + 5.0
    while [p.uid for p in peers] != [0, 1, 2, 3] and time.monotonic() < deadline:
        time.sleep(0.05)
        peers.refresh(metagraph(4))  # a store that finished opening is picked up
    assert [p.uid for p in peers] == [0, 1, 2, 3]


def test_a_replaying_node_waits_with_patience_for_stores_still_opening(monkeypatch, tmp_path):
    """A node that replays or joins right after starting builds its first clients slowly; with
    ``patience`` refresh waits for every wanted store still opening (started now or before), so a
    replay does not count fewer payloads than the live nodes did. A stalled one still costs at
    most the patience."""
    import threading
    import time

    import neurons.peers as peers_module

    monkeypatch.setattr(peers_module, "OPEN_BUDGET_SECONDS", 0.2)
    slow = threading.Event()

    def make_store(c: BucketCommitment):
        if c.bucket.startswith("slow"):
            slow.wait(0.8)  # slower than the live budget, faster than the patience
        if c.bucket.startswith("stuck"):
            time.sleep(5)
        return LocalStore(tmp_path / c.bucket)

    chain = FakeChain({0: good("fast-zero"), 1: good("slow-one"), 2: good("stuck-two")})
    peers = PeerDirectory(chain, make_store)
    peers.refresh(metagraph(3))  # live: the slow store misses the budget
    assert [p.uid for p in peers] == [0]
    started = time.monotonic()
    peers.refresh(metagraph(3), patience=2.0)  # replay: waits for the slow one started earlier
    waited = time.monotonic() - started
    assert [p.uid for p in peers] == [0, 1]
    assert 0.3 < waited < 3.0  # the stuck one costs the patience, not its 5 s


def test_a_peer_whose_client_is_still_being_built_is_fetched_within_its_own_budget(monkeypatch, tmp_path):
    """A fresh process builds its first S3 clients slowly. A peer whose store is still opening at
    the gather is not "no bucket commitment": its fetch waits for the store within the peer's own
    fetch deadline, side by side with the other peers (found when a restarted stage's first live
    gather missed an honest payload and left it out of step)."""
    import threading

    import neurons.peers as peers_module
    from neurons.fetch import fetch_many
    from protocol.acceptance import AcceptanceRule

    monkeypatch.setattr(peers_module, "OPEN_BUDGET_SECONDS", 0.1)
    release = threading.Event()

    def make_store(c: BucketCommitment):
        if c.bucket.startswith("slow"):
            release.wait(5)
        return LocalStore(tmp_path / c.bucket)

    peers = PeerDirectory(FakeChain({0: good("fast-zero"), 1: good("slow-one")}), make_store)
    peers.refresh(metagraph(2))
    assert [p.uid for p in peers] == [0] and peers.is_opening(1) and not peers.is_opening(0)
    rule = AcceptanceRule(run_id="r", window=3, slot_start=0.0, slot_seconds=1.0, max_bytes=1 << 20)
    threading.Timer(0.3, release.set).start()  # the client is ready 0.3 s into a 3 s budget
    fetched = fetch_many(peers, [0, 1], rule, {}, budget_seconds=3.0)
    # both buckets are empty: each peer is missing for having no payload, not for having no bucket
    assert {uid: f.result.detail for uid, f in fetched.items()} == {0: "no payload", 1: "no payload"}

    release.clear()
    peers = PeerDirectory(FakeChain({1: good("slow-again")}), make_store)
    peers.refresh(metagraph(2))
    late = fetch_many(peers, [1], rule, {}, budget_seconds=0.3)[1]  # never ready within the budget
    assert "could not be built by the deadline" in late.result.detail
    release.set()

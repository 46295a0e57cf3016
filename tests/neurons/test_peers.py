"""Peers from chain commitments: each valid bucket commitment becomes a reader for that uid; a
malformed one is skipped with a logged reason; stores are reused until a peer re-commits."""

from __future__ import annotations

import functools
import logging

import pytest

from neurons.peers import PeerDirectory, read_only_store
from protocol.commitment import BucketCommitment
from protocol.signing import HotkeySigner
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
    store = read_only_store(c)
    assert isinstance(store, S3Store)
    assert (store.endpoint_url, store.bucket, store.region, store.access_key_id) == (
        "http://127.0.0.1:9", "peer-bucket", "us-east-1", "reader",
    )
    assert "read-secret" not in repr(store)

"""The bounded sender against a real SigV4 server (SeaweedFS on loopback): a peer store reads
what the owner wrote, with the endpoint checked and the connection pinned to the checked
address, and SeaweedFS accepts the signatures (the Host header is the one botocore signed)."""

from __future__ import annotations

import socket
import time
import uuid

import pytest

from neurons.localnet.seaweedfs import SeaweedServer
from storage.endpoints import EndpointPolicy
from storage.errors import AccessDenied, ObjectNotFound
from storage.retry import RetryPolicy
from storage.s3 import S3Store

pytestmark = pytest.mark.integration
LOCAL = EndpointPolicy(allow_loopback=True)


def _loopback(host, port, **_kwargs):
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]


@pytest.mark.parametrize("named", [False, True], ids=["address", "host-name"])
def test_a_peer_store_reads_a_real_bucket_under_a_deadline(seaweed: SeaweedServer, seaweed_bucket: str, named):
    prefix = f"peer-{uuid.uuid4().hex[:8]}/"
    writer = seaweed.store("writer", seaweed_bucket)
    for i in range(3):
        writer.put(f"{prefix}{i}", b"x" * (i + 1))
    port = seaweed.endpoint_url.rsplit(":", 1)[1]
    endpoint = f"http://s3.peer.test:{port}" if named else seaweed.endpoint_url
    reader = seaweed.identity("reader")
    store = S3Store(endpoint, seaweed_bucket, reader.access_key, reader.secret_key, policy=LOCAL,
                        resolve=_loopback, list_page_size=2, retry=RetryPolicy(attempts=1))
    deadline = time.monotonic() + 10
    assert store.head(f"{prefix}2", deadline=deadline).size == 3
    assert store.get(f"{prefix}1", 10, deadline=deadline) == b"xx"
    assert [i.key for i in store.list(prefix, deadline=deadline)] == [f"{prefix}{i}" for i in range(3)]
    with pytest.raises(ObjectNotFound):
        store.get(f"{prefix}missing", 10, deadline=deadline)
    with pytest.raises(AccessDenied):  # read-only stays read-only through the bounded sender
        store.put(f"{prefix}new", b"no")

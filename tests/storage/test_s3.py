"""S3Store against moto (in-process, fast) plus a closed port for the unavailable path."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import boto3
import pytest
from botocore.exceptions import ReadTimeoutError
from botocore.stub import Stubber
from moto import mock_aws

from storage.errors import BucketNotFound, ObjectExists, ObjectNotFound, ObjectTooLarge, StorageUnavailable
from storage.retry import RetryPolicy
from storage.s3 import S3Store
from storage.store import ObjectInfo

SECRET = "moto-secret-never-printed"
FAST = RetryPolicy(attempts=3, base_delay=0.0)


@pytest.fixture
def store() -> Iterator[S3Store]:
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bkt")
        yield S3Store(None, "bkt", "AKIDMOTO", SECRET, region="us-east-1", retry=FAST, list_page_size=2)


def test_roundtrip(store: S3Store) -> None:
    info = store.put("run/1/p", b"payload")
    assert info.key == "run/1/p" and info.size == 7 and info.last_modified.utcoffset().total_seconds() == 0
    assert store.get("run/1/p", 7) == b"payload"
    assert store.head("run/1/p").size == 7
    store.delete("run/1/p")
    store.delete("run/1/p")  # idempotent
    with pytest.raises(ObjectNotFound):
        store.get("run/1/p", 100)


def test_conditional_put_refuses_overwrite(store: S3Store) -> None:
    store.put("k", b"first")
    with pytest.raises(ObjectExists):
        store.put("k", b"second")
    assert store.get("k", 100) == b"first"


def test_head_then_put_fallback(store: S3Store) -> None:
    store.conditional_put = False
    store.put("k", b"first")
    with pytest.raises(ObjectExists, match="HEAD before PUT"):
        store.put("k", b"second")


def test_list_paginates_and_sorts(store: S3Store) -> None:
    for i in (4, 0, 3, 1, 2):
        store.put(f"p/{i}", b"x")
    store.put("q/0", b"x")
    calls: list[str] = []
    store._client.meta.events.register("before-call.s3.ListObjectsV2", lambda **_kw: calls.append("page"))
    assert [i.key for i in store.list("p/")] == [f"p/{i}" for i in range(5)]
    assert len(calls) == 3  # 5 objects at 2 per page
    assert all(isinstance(i, ObjectInfo) for i in store.list(""))


def test_cap_refused_by_head_without_downloading(store: S3Store) -> None:
    store.put("big", b"x" * 1000)
    gets: list[str] = []
    store._client.meta.events.register("before-call.s3.GetObject", lambda **_kw: gets.append("get"))
    with pytest.raises(ObjectTooLarge) as err:
        store.get("big", 999)
    assert err.value.size == 1000 and gets == []


def test_cap_enforced_while_streaming_when_head_lies(store: S3Store, monkeypatch) -> None:
    store.put("big", b"x" * 5000)
    real = store.head("big")
    monkeypatch.setattr(store, "head", lambda key, deadline=None: ObjectInfo(key, 10, real.last_modified))
    with pytest.raises(ObjectTooLarge, match="while streaming"):
        store.get("big", 100)


def test_transient_errors_retried(store: S3Store) -> None:
    store.put("k", b"v")
    with Stubber(store._client) as stub:
        stub.add_client_error("head_object", "SlowDown", http_status_code=503)
        stub.add_response("head_object", {"ContentLength": 1, "LastModified": store_time()})
        assert store.head("k").size == 1


def test_transient_errors_exhausted_become_unavailable(store: S3Store) -> None:
    with Stubber(store._client) as stub:
        for _ in range(FAST.attempts):
            stub.add_client_error("head_object", "InternalError", http_status_code=500)
        with pytest.raises(StorageUnavailable):
            store.head("k")


def test_put_retry_that_finds_its_own_object_succeeds(store: S3Store, monkeypatch) -> None:
    real_put = store._client.put_object
    calls = {"n": 0}

    def lost_answer(**kwargs):
        calls["n"] += 1
        response = real_put(**kwargs)
        if calls["n"] == 1:
            raise ReadTimeoutError(endpoint_url="http://moto")  # landed, but the answer was lost
        return response

    monkeypatch.setattr(store._client, "put_object", lost_answer)
    assert store.put("k", b"mine").size == 4
    assert calls["n"] == 2
    with pytest.raises(ObjectExists):  # someone else's content is still refused
        store.put("k", b"other")


def test_missing_bucket(store: S3Store) -> None:
    other = S3Store(None, "no-such-bucket", "AKIDMOTO", SECRET, region="us-east-1", retry=FAST)
    with pytest.raises(BucketNotFound):
        other.list("")
    with pytest.raises(ObjectNotFound):  # HEAD 404 carries no code
        other.get("k", 10)


def test_repr_hides_secret() -> None:
    store = S3Store("http://127.0.0.1:1", "bkt", "AKID", SECRET)
    assert SECRET not in repr(store) and SECRET not in str(store)


def test_unreachable_endpoint_is_unavailable_after_retries() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    slept: list[float] = []
    store = S3Store(
        f"http://127.0.0.1:{port}", "bkt", "AKID", SECRET, connect_timeout=0.5, retry=FAST, sleep=slept.append
    )
    with pytest.raises(StorageUnavailable, match="unreachable"):
        store.head("k")
    assert len(slept) == FAST.attempts - 1


def store_time():
    import datetime as dt

    return dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

"""S3Store against a hostile server on 127.0.0.1: every misbehaviour ends in a typed
StorageError (never another exception), and never later than the deadline plus a little."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from storage.endpoints import EndpointPolicy
from storage.errors import (
    BadResponse,
    ListingTooLong,
    ObjectTooLarge,
    StorageError,
    StorageTimeout,
    StorageUnavailable,
)
from storage.retry import RetryPolicy
from storage.s3 import S3Store
from tests.storage.hostile_server import GOOD_DATE, HEADER_MODES, HostileServer

DEADLINE = 2.0
SLACK = 2.0  # scheduling on two shared cores (the stalls last 8 s); the drip itself is 0.5 s per byte
LOCAL = EndpointPolicy(allow_loopback=True)


def make_store(server: HostileServer, *, peer: bool = True, **options) -> S3Store:
    options = {"retry": RetryPolicy(attempts=3, base_delay=0.01), "connect_timeout": 1.0,
               "read_timeout": 10.0, "max_pages": 5, "list_page_size": 2, **options}
    return S3Store(server.url, "bkt", "AKID", "read-secret", region="us-east-1",
                   policy=LOCAL if peer else None, **options)


OPS: dict[str, Callable[[S3Store, float | None], object]] = {
    "head": lambda store, deadline: store.head("run/k", deadline=deadline),
    "get": lambda store, deadline: store.get("run/k", 100, deadline=deadline),
    "list": lambda store, deadline: store.list("run/", deadline=deadline),
}


@pytest.fixture
def served(request) -> Iterator[HostileServer]:
    with HostileServer(request.param, stall_seconds=DEADLINE + 4) as server:
        yield server


def outcome(store: S3Store, op: str, deadline: float | None) -> tuple[object, float]:
    start = time.monotonic()
    try:
        result: object = OPS[op](store, deadline)
    except StorageError as exc:
        result = exc
    return result, time.monotonic() - start


# (mode, op) -> the typed error it must end in; every other (mode, op) below must succeed
EXPECTED: dict[tuple[str, str], type[StorageError]] = {
    **{(mode, op): BadResponse for mode in HEADER_MODES for op in ("head", "get")},
    ("far_future_date", "head"): type(None),  # returned as it is: the slot check calls it late
    ("far_future_date", "get"): type(None),
    ("huge_length", "head"): type(None),
    ("huge_length", "get"): ObjectTooLarge,
    **{(mode, op): BadResponse for mode in ("redirect_301", "redirect_307") for op in OPS},
    **{(mode, op): StorageTimeout for mode in ("drip_headers", "hang") for op in OPS},
    ("drip", "get"): StorageTimeout,
    **{("always_503", op): StorageUnavailable for op in OPS},
    ("endless_listing", "list"): ListingTooLong,
    ("repeated_token", "list"): ListingTooLong,
    ("not_xml", "list"): StorageError,  # botocore reads an unparsable 200 as a 500: retried, then typed
    ("short_body", "get"): StorageUnavailable,
    ("oversized_page", "list"): BadResponse,
}
# each of these waits out the deadline; `get` begins with the same HEAD, the drip has its own test
SKIP = {("drip_headers", "get"), ("hang", "get"), ("drip", "get")}
CASES = sorted({mode for mode, _ in EXPECTED})


@pytest.mark.parametrize("served", CASES, indirect=True)
def test_every_answer_is_typed_and_on_time(served: HostileServer) -> None:
    store = make_store(served)
    for op in OPS:
        if (served.mode, op) in SKIP:
            continue
        deadline = time.monotonic() + DEADLINE
        result, took = outcome(store, op, deadline)
        assert took < DEADLINE + SLACK, f"{served.mode}/{op} took {took:.2f}s"
        check(served.mode, op, result)


def check(mode: str, op: str, result: object) -> None:
    expected = EXPECTED.get((mode, op))
    if expected is None or expected is type(None):
        assert not isinstance(result, BaseException), f"{mode}/{op}: {result!r}"
    else:
        assert isinstance(result, expected), f"{mode}/{op}: {result!r}"


@pytest.mark.parametrize("served", ["drip"], indirect=True)
def test_a_dripping_body_ends_at_the_deadline(served: HostileServer) -> None:
    # one byte every 0.5 s, ten bytes: per-socket read timeouts never fire, the deadline does
    start = time.monotonic()
    with pytest.raises(StorageTimeout, match="deadline"):
        make_store(served).get("run/k", 100, deadline=start + 2.0)
    took = time.monotonic() - start
    assert took < 4.0
    print(f"drip fetch with a 2 s deadline ended after {took:.2f} s")


@pytest.mark.parametrize("served", ["drip"], indirect=True)
def test_a_trusted_store_with_a_deadline_is_bounded_too(served: HostileServer) -> None:
    start = time.monotonic()
    with pytest.raises(StorageTimeout):
        make_store(served, peer=False).get("run/k", 100, deadline=start + 1.0)
    assert time.monotonic() - start < 1.0 + SLACK


@pytest.mark.parametrize("served", ["always_503"], indirect=True)
def test_the_deadline_bounds_retries_and_backoff(served: HostileServer) -> None:
    slow = RetryPolicy(attempts=50, base_delay=5.0, max_delay=5.0)
    start = time.monotonic()
    with pytest.raises(StorageTimeout):
        make_store(served, retry=slow).head("run/k", deadline=start + 1.0)
    assert time.monotonic() - start < 1.0 + SLACK


@pytest.mark.parametrize(
    "served", ["no_last_modified", "negative_length", "garbage_date", "redirect_301", "endless_listing"],
    indirect=True,
)
def test_botocores_own_sender_gives_the_same_typed_answers(served: HostileServer) -> None:
    # a trusted store without a deadline keeps botocore's sender; the typing is the same
    store = make_store(served, peer=False)
    for op in OPS:
        result, _took = outcome(store, op, None)
        check(served.mode, op, result)


@pytest.mark.parametrize("served", ["ok"], indirect=True)
def test_an_honest_answer_reads_back(served: HostileServer) -> None:
    store = make_store(served)
    deadline = time.monotonic() + DEADLINE
    info = store.head("run/k", deadline=deadline)
    assert info.size == 10 and info.last_modified.timestamp() == 1_735_689_600
    assert store.get("run/k", 10, deadline=deadline) == b"0123456789"
    with pytest.raises(ObjectTooLarge):
        store.get("run/k", 9, deadline=deadline)
    assert GOOD_DATE.endswith("GMT")


@pytest.mark.parametrize("served", ["far_future_date"], indirect=True)
def test_a_far_future_date_is_returned_not_raised(served: HostileServer) -> None:
    assert make_store(served).head("run/k").last_modified.year == 9999

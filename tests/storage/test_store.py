import datetime as dt
import time

import pytest

from storage.errors import InvalidKey, StorageTimeout
from storage.local import LocalStore
from storage.store import MAX_KEY_BYTES, ObjectInfo, validate_key


@pytest.mark.parametrize("key", ["a", "run/w/00000012/payload.st", "x y+z=é", "a.b/c..d/.e"])
def test_valid_keys_pass(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key",
    ["", "/abs", "trail/", "a//b", "../x", "a/../b", "a/./b", ".", "..", "a\\b", "a\x00b", "a\nb", "é" * 600],
)
def test_invalid_keys_rejected(key: str) -> None:
    with pytest.raises(InvalidKey):
        validate_key(key)


def test_key_length_limit_is_in_bytes() -> None:
    assert validate_key("k" * MAX_KEY_BYTES)
    with pytest.raises(InvalidKey):
        validate_key("k" * (MAX_KEY_BYTES + 1))


def test_object_info_requires_aware_time() -> None:
    with pytest.raises(ValueError, match="timezone"):
        ObjectInfo("k", 1, dt.datetime(2025, 1, 1))


def test_delete_many_reports_per_key_outcomes(tmp_path) -> None:
    store = LocalStore(tmp_path, concurrency=3)
    for i in range(5):
        store.put(f"k/{i}", bytes([i]))
    assert store.delete_many(["k/0", "k/1", "k/0", "k/missing"]) == {"k/0": None, "k/1": None, "k/missing": None}
    assert [i.key for i in store.list("k/")] == ["k/2", "k/3", "k/4"]
    assert store.delete_many([]) == {}


def test_local_reads_refuse_a_passed_deadline(tmp_path) -> None:
    store = LocalStore(tmp_path)
    store.put("k", b"v")
    later = time.monotonic() + 60
    assert store.get("k", 1, deadline=later) == b"v" and store.head("k", deadline=later).size == 1
    assert [i.key for i in store.list(deadline=later)] == ["k"]
    for read in (lambda d: store.get("k", 1, deadline=d), lambda d: store.head("k", deadline=d),
                 lambda d: store.list(deadline=d)):
        with pytest.raises(StorageTimeout):
            read(time.monotonic() - 1)

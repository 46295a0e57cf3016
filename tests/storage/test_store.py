import datetime as dt

import pytest

from storage.errors import InvalidKey, ObjectNotFound, ObjectTooLarge
from storage.local import LocalStore
from storage.store import MAX_KEY_BYTES, ObjectInfo, to_utc, validate_key


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


def test_to_utc_converts_offsets() -> None:
    plus2 = dt.datetime(2025, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert to_utc(plus2) == dt.datetime(2025, 1, 1, 10, tzinfo=dt.UTC)
    assert to_utc(plus2).utcoffset() == dt.timedelta(0)


def test_many_helpers_report_per_key_outcomes(tmp_path) -> None:
    store = LocalStore(tmp_path, concurrency=3)
    for i in range(5):
        store.put(f"k/{i}", bytes([i]) * (i + 1))
    keys = [f"k/{i}" for i in range(5)] + ["k/missing", "k/0"]  # duplicate collapses
    got = store.get_many(keys, max_bytes=3)
    assert list(got) == [f"k/{i}" for i in range(5)] + ["k/missing"]
    assert got["k/0"] == b"\x00" and got["k/2"] == b"\x02" * 3
    assert isinstance(got["k/3"], ObjectTooLarge) and isinstance(got["k/missing"], ObjectNotFound)
    heads = store.head_many(["k/4", "nope"])
    assert isinstance(heads["k/4"], ObjectInfo) and heads["k/4"].size == 5
    assert isinstance(heads["nope"], ObjectNotFound)
    assert store.delete_many(["k/0", "k/1"]) == {"k/0": None, "k/1": None}
    assert [i.key for i in store.list("k/")] == ["k/2", "k/3", "k/4"]
    assert store.get_many([], 1) == {}

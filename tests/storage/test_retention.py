import pytest

from storage.local import LocalStore
from storage.retention import expired_keys, prune_old_windows
from storage.store import ObjectInfo


def window_of_key(key: str) -> int | None:
    # stand-in for protocol.keys.window_of_key: "<run>/payload/<window>/<uid>"
    parts = key.split("/")
    if len(parts) != 4 or parts[1] != "payload":
        return None
    return int(parts[2])  # raises ValueError on junk, which retention must tolerate


def test_prune_deletes_only_old_dated_keys(tmp_path) -> None:
    store = LocalStore(tmp_path)
    for w in range(10):
        store.put(f"run1/payload/{w}/7", b"x")
    store.put("run1/payload/notanumber/7", b"x")
    store.put("run1/checkpoint/latest", b"x")
    store.put("run2/payload/0/7", b"x")  # other prefix: untouched
    report = prune_old_windows(
        store, "run1/", current_window=9, max_age_windows=3, window_of_key=window_of_key
    )
    assert sorted(report.deleted) == [f"run1/payload/{w}/7" for w in range(6)]
    assert report.kept == 4 and report.undated == 2 and not report.failed
    remaining = {i.key for i in store.list()}
    assert remaining == {f"run1/payload/{w}/7" for w in range(6, 10)} | {
        "run1/payload/notanumber/7",
        "run1/checkpoint/latest",
        "run2/payload/0/7",
    }


def test_future_windows_are_kept() -> None:
    infos = [ObjectInfo(f"r/payload/{w}/1", 1, _epoch()) for w in (1, 50)]
    expired, kept, undated = expired_keys(
        infos, current_window=10, max_age_windows=5, window_of_key=window_of_key
    )
    assert expired == ["r/payload/1/1"] and kept == 1 and undated == 0


def test_negative_age_rejected() -> None:
    with pytest.raises(ValueError):
        expired_keys([], 1, -1, window_of_key)


def _epoch():
    import datetime as dt

    return dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

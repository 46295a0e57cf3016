import datetime as dt
import os
import threading
import time

import pytest

from storage.errors import InvalidKey, ObjectExists, ObjectNotFound, ObjectTooLarge
from storage.local import LocalStore


def test_roundtrip_and_info(tmp_path) -> None:
    store = LocalStore(tmp_path)
    before = time.time()
    info = store.put("run/w/1/p", b"hello")
    assert info.key == "run/w/1/p" and info.size == 5
    assert info.last_modified.tzinfo == dt.UTC
    assert before - 1 <= info.last_modified.timestamp() <= time.time() + 1
    assert store.get("run/w/1/p", max_bytes=5) == b"hello"
    assert store.head("run/w/1/p") == info


def test_never_overwrites(tmp_path) -> None:
    store = LocalStore(tmp_path)
    store.put("k", b"first")
    with pytest.raises(ObjectExists):
        store.put("k", b"second")
    assert store.get("k", 100) == b"first"
    assert os.listdir(tmp_path / "tmp") == []  # the failed upload left no temp file


def test_concurrent_puts_have_one_winner(tmp_path) -> None:
    store = LocalStore(tmp_path)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            store.put("race", f"writer-{i}".encode())
            outcomes.append("won")
        except ObjectExists:
            outcomes.append("refused")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("won") == 1 and outcomes.count("refused") == 7
    assert store.get("race", 100).startswith(b"writer-")


def test_size_cap(tmp_path) -> None:
    store = LocalStore(tmp_path)
    store.put("big", b"x" * 100)
    with pytest.raises(ObjectTooLarge) as err:
        store.get("big", max_bytes=99)
    assert err.value.size == 100 and err.value.max_bytes == 99
    assert store.get("big", max_bytes=100) == b"x" * 100


def test_missing_and_idempotent_delete(tmp_path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(ObjectNotFound):
        store.get("nope", 10)
    with pytest.raises(ObjectNotFound):
        store.head("nope")
    store.delete("nope")
    store.put("k", b"1")
    store.delete("k")
    with pytest.raises(ObjectNotFound):
        store.head("k")


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/etc/passwd", "a//b"])
def test_path_traversal_rejected(tmp_path, key: str) -> None:
    store = LocalStore(tmp_path / "root")
    with pytest.raises(InvalidKey):
        store.put(key, b"x")
    assert not (tmp_path / "escape").exists()


def test_key_and_prefix_can_coexist_and_list_by_prefix(tmp_path) -> None:
    store = LocalStore(tmp_path)
    for key in ["a", "a/b", "a/b/c", "ab", "b/%2F", "é/x"]:
        store.put(key, key.encode())
    assert [i.key for i in store.list("a/")] == ["a/b", "a/b/c"]
    assert [i.key for i in store.list("a")] == ["a", "a/b", "a/b/c", "ab"]
    assert store.get("b/%2F", 10) == b"b/%2F"
    assert [i.key for i in store.list()] == sorted(["a", "a/b", "a/b/c", "ab", "b/%2F", "é/x"])


def test_other_process_sees_objects(tmp_path) -> None:
    LocalStore(tmp_path).put("shared", b"data")
    assert LocalStore(tmp_path).get("shared", 10) == b"data"


def test_overlong_encoded_key_rejected(tmp_path) -> None:
    with pytest.raises(InvalidKey):
        LocalStore(tmp_path).put("/".join(["seg"] * 80), b"x")  # 80 '/' -> '%2F' exceed NAME_MAX

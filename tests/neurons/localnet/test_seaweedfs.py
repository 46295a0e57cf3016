"""Integration: S3Store against a real SeaweedFS on loopback (SigV4, per-identity actions)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest

from neurons.localnet.seaweedfs import READ_WRITE, Identity, SeaweedServer
from protocol.acceptance import RejectReason, check_slot
from storage.errors import AccessDenied, ObjectExists, ObjectTooLarge
from storage.retry import RetryPolicy
from storage.s3 import S3Store

pytestmark = pytest.mark.integration
NO_RETRY = RetryPolicy(attempts=1)


@pytest.fixture
def prefix() -> str:
    return f"t/{uuid.uuid4().hex}/"


def _writer(server: SeaweedServer) -> S3Store:
    return server.store("writer", server.buckets[0])


def _reader(server: SeaweedServer) -> S3Store:
    return server.store("reader", server.buckets[0], retry=NO_RETRY)


def test_read_only_key_reads_and_lists_but_cannot_write(seaweed: SeaweedServer, prefix: str) -> None:
    _writer(seaweed).put(prefix + "a", b"payload")
    reader = _reader(seaweed)
    assert reader.get(prefix + "a", 100) == b"payload"
    assert [i.key for i in reader.list(prefix)] == [prefix + "a"]
    with pytest.raises(AccessDenied):
        reader.put(prefix + "b", b"forged")
    with pytest.raises(AccessDenied):
        reader.delete(prefix + "a")
    assert _writer(seaweed).get(prefix + "a", 100) == b"payload"


def test_wrong_secret_and_unknown_key_refused(
    seaweed: SeaweedServer, seaweed_bucket: str, prefix: str
) -> None:
    _writer(seaweed).put(prefix + "a", b"x")
    writer_id = seaweed.identity("writer")
    wrong = S3Store(
        seaweed.endpoint_url, seaweed_bucket, writer_id.access_key, "not-the-secret", retry=NO_RETRY
    )
    for call in (
        lambda: wrong.get(prefix + "a", 10),
        lambda: wrong.list(prefix),
        lambda: wrong.put(prefix + "z", b""),
    ):
        with pytest.raises(AccessDenied):
            call()
    unknown = S3Store(seaweed.endpoint_url, seaweed_bucket, "NOSUCHKEY", "whatever", retry=NO_RETRY)
    with pytest.raises(AccessDenied):
        unknown.list(prefix)


def test_writer_cannot_touch_other_buckets(seaweed: SeaweedServer) -> None:
    other = seaweed.store("writer", "some-other-bucket", retry=NO_RETRY)
    with pytest.raises(AccessDenied):
        other.put("k", b"x")


def test_conditional_put_refuses_overwrite_atomically(seaweed: SeaweedServer, prefix: str) -> None:
    writer = _writer(seaweed)
    writer.put(prefix + "once", b"first")
    with pytest.raises(ObjectExists):
        writer.put(prefix + "once", b"second")
    assert writer.get(prefix + "once", 100) == b"first"

    barrier = threading.Barrier(8)
    winners: list[int] = []

    def race(i: int) -> None:
        barrier.wait()
        try:
            writer.put(prefix + "race", f"w{i}".encode() * 1000)
            winners.append(i)
        except ObjectExists:
            pass

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert writer.get(prefix + "race", 10_000) == f"w{winners[0]}".encode() * 1000


def test_size_cap_refuses_before_download(seaweed: SeaweedServer, prefix: str) -> None:
    _writer(seaweed).put(prefix + "big", b"x" * 4096)
    reader = _reader(seaweed)
    gets: list[str] = []
    reader._client.meta.events.register("before-call.s3.GetObject", lambda **_kw: gets.append("get"))
    with pytest.raises(ObjectTooLarge) as err:
        reader.get(prefix + "big", 4095)
    assert err.value.size == 4096 and gets == []
    assert len(reader.get(prefix + "big", 4096)) == 4096 and gets == ["get"]


def test_last_modified_drives_the_slot_check(seaweed: SeaweedServer, prefix: str) -> None:
    # server and test share one clock here; on a real network the slot comes from chain
    # block timestamps and LastModified from the bucket's server, never the node's clock
    writer = _writer(seaweed)
    start = time.time()
    written = writer.put(prefix + "p", b"x")
    end = time.time()
    seen = _reader(seaweed).head(prefix + "p")  # what a validator sees
    assert seen.last_modified == written.last_modified
    assert seen.last_modified.utcoffset().total_seconds() == 0
    stamp = seen.last_modified.timestamp()  # whole seconds: the slot check gives one second of doubt
    assert check_slot(stamp, start, end - start) is None
    assert check_slot(stamp, start + 5, 5).reason is RejectReason.EARLY
    assert check_slot(stamp, start - 10, 5).reason is RejectReason.LATE
    listed = {i.key: i for i in _reader(seaweed).list(prefix)}
    assert listed[prefix + "p"].last_modified == seen.last_modified


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = str(fd.readlink()) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A = LISTEN
                addr, port = cols[1].split(":")
                ip = ".".join(str(int(addr[i : i + 2], 16)) for i in (6, 4, 2, 0)) if len(addr) == 8 else addr
                found.add((ip, int(port, 16)))
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_every_listener_is_explicit_and_on_loopback(seaweed: SeaweedServer) -> None:
    assert seaweed._proc is not None
    assert _listening(seaweed._proc.pid) == {("127.0.0.1", p) for p in seaweed.ports.values()}


def test_restart_on_same_data_dir_keeps_objects(tmp_path: Path) -> None:
    node = Identity.generate("node0", READ_WRITE, ["node0-bucket"])
    with SeaweedServer(tmp_path, [node]) as server:
        server.store(node, "node0-bucket").put("w/1", b"kept")
    assert not server.running
    with SeaweedServer(tmp_path, [node]) as server:
        store = server.store(node, "node0-bucket")
        assert store.get("w/1", 10) == b"kept"
        with pytest.raises(ObjectExists):
            store.put("w/1", b"again")


def test_every_bucket_of_a_large_subnet_can_be_written(tmp_path: Path) -> None:
    # 12 buckets, as a subnet of 5 miners, 2 adversaries, a validator, the owner and the dataset
    # has: with a fixed 64 volume slots the last buckets' puts failed (7 volumes per bucket)
    nodes = [Identity.generate(f"node{i}", READ_WRITE, [f"node{i}-bucket"]) for i in range(12)]
    with SeaweedServer(tmp_path, nodes) as server:
        for node in nodes:
            store = server.store(node, f"{node.name}-bucket", retry=NO_RETRY)
            store.put("w/1", b"payload")
            assert store.get("w/1", 10) == b"payload"

"""The run's published dataset: publish to a real S3 server (SeaweedFS on loopback), fetch lazily,
verify every shard, refuse corrupted shards and hostile headers, keep the offline path."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from neurons import dataset as dataset_module
from neurons.data import SampleSpace, assigned_batches, assigned_indices
from neurons.dataset import (
    DataDigestMismatch,
    DataLocation,
    DatasetError,
    RemoteShards,
    ShardCorrupted,
    fetch_index,
    open_dataset,
    open_run_data,
    publish_dataset,
)
from neurons.shards import INDEX_FILE, MAX_SHARDS, ShardError, ShardWriter, TokenShards
from storage import ObjectTooLarge
from storage.endpoints import EndpointPolicy
from storage.local import LocalStore

SEQ = 16
LOOPBACK = EndpointPolicy(allow_loopback=True)


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory: pytest.TempPathFactory) -> TokenShards:
    """8 shards of ~400 tokens each: enough that a few samples touch only some of them."""
    out = tmp_path_factory.mktemp("many-shards")
    writer = ShardWriter(out, vocab_size=1000, eos_id=0, shard_tokens=400)
    rng = np.random.default_rng(7)
    for _ in range(64):
        writer.add_document(rng.integers(1, 1000, size=49))
    writer.finish(tokenizer_sha256="ab" * 32, source="test", tokenizer="test-tok")
    (out / "tokenizer.json").write_text('{"model": {}}')
    return TokenShards(out)


@pytest.fixture
def location(seaweed, seaweed_bucket) -> DataLocation:
    """A fresh prefix, read with the fixture's read-only key (as a node would)."""
    reader = seaweed.identity("reader")
    return DataLocation(
        seaweed.endpoint_url, seaweed_bucket, f"data-{uuid.uuid4().hex[:8]}", "us-east-1",
        reader.access_key, reader.secret_key,
    )


@pytest.fixture
def writer_store(seaweed, seaweed_bucket):
    return seaweed.store("writer", seaweed_bucket)


def _published(many_shards: TokenShards, writer_store, location: DataLocation) -> str:
    report = publish_dataset(many_shards.directory, writer_store, location)
    assert report.data_digest == many_shards.digest
    return report.data_digest


def test_publish_then_fetch_gives_the_same_samples(many_shards, writer_store, location, tmp_path) -> None:
    digest = _published(many_shards, writer_store, location)
    remote = open_dataset(location.url(), digest, tmp_path, policy=LOOPBACK)
    assert remote.digest == digest and len(remote) == len(many_shards) == 8
    local = assigned_batches(many_shards, 3, uid=1, window=4, n_batches=2, batch_size=2, seq_len=SEQ)
    fetched = assigned_batches(remote, 3, uid=1, window=4, n_batches=2, batch_size=2, seq_len=SEQ)
    assert all((a == b).all() for a, b in zip(local, fetched, strict=True))
    remote.verify()
    assert sorted(p.name for p in (tmp_path / digest).glob("*.bin")) == [f"shard-{i:05d}.bin" for i in range(8)]
    # the published header is exactly the canonical bytes: its sha256 is the data digest
    raw = writer_store.get(location.key(INDEX_FILE), 1 << 20)
    assert hashlib.sha256(raw).hexdigest() == digest


def test_fetch_is_lazy_and_only_what_the_assignment_needs(many_shards, writer_store, location, tmp_path) -> None:
    digest = _published(many_shards, writer_store, location)
    remote = open_dataset(location.url(), digest, tmp_path, policy=LOOPBACK)
    assert remote.fetched == [] and not list((tmp_path / digest).glob("*.bin"))
    space = SampleSpace.build(many_shards, SEQ, "train")
    indices = assigned_indices(space, 3, 2, 9, 2)  # two samples
    needed = {f"shard-{np.searchsorted(space.cumulative, i, side='right') - 1:05d}" for i in indices}
    assigned_batches(remote, 3, uid=2, window=9, n_batches=1, batch_size=2, seq_len=SEQ)
    assert set(remote.fetched) == needed and len(needed) < len(remote)


def test_cached_shards_are_reverified_and_a_damaged_one_is_fetched_again(
    many_shards, writer_store, location, tmp_path
) -> None:
    digest = _published(many_shards, writer_store, location)
    first = open_dataset(location.url(), digest, tmp_path, policy=LOOPBACK)
    first.tokens(2)
    assert first.fetched == ["shard-00002"]
    again = open_dataset(location.url(), digest, tmp_path, policy=LOOPBACK)
    again.tokens(2)
    assert again.fetched == []  # the cached copy hashed right: no download
    cached = tmp_path / digest / "shard-00002.bin"
    cached.write_bytes(b"\x01" * cached.stat().st_size)
    third = open_dataset(location.url(), digest, tmp_path, policy=LOOPBACK)
    assert np.array_equal(third.tokens(2), many_shards.tokens(2))
    assert third.fetched == ["shard-00002"]


def test_corrupted_shard_is_refused_naming_it(many_shards, writer_store, location, tmp_path) -> None:
    digest = _published(many_shards, writer_store, location)
    key = location.key("shard-00005.bin")
    good = writer_store.get(key, 1 << 20)
    writer_store.delete(key)
    writer_store.put(key, bytes([good[0] ^ 1]) + good[1:])  # same size, one bit flipped
    remote = open_dataset(location.url(), digest, tmp_path, policy=LOOPBACK)
    with pytest.raises(ShardCorrupted, match="shard-00005") as caught:
        remote.tokens(5)
    assert caught.value.shard == "shard-00005"
    assert not (tmp_path / digest / "shard-00005.bin").exists()  # nothing unverified is cached
    remote.tokens(4)  # the other shards are unaffected


def test_oversized_shard_is_refused_before_download(many_shards, writer_store, location, tmp_path) -> None:
    digest = _published(many_shards, writer_store, location)
    key = location.key("shard-00001.bin")
    good = writer_store.get(key, 1 << 20)
    writer_store.delete(key)
    writer_store.put(key, good + b"\x00" * 4096)
    remote = open_dataset(location.url(), digest, tmp_path, policy=LOOPBACK)
    with pytest.raises(ObjectTooLarge, match="refused by HEAD"):
        remote.tokens(1)


def test_wrong_digest_is_refused_before_parsing(many_shards, writer_store, location, tmp_path) -> None:
    _published(many_shards, writer_store, location)
    with pytest.raises(DataDigestMismatch, match="another dataset"):
        open_dataset(location.url(), "0" * 64, tmp_path, policy=LOOPBACK)


def test_publish_twice_is_idempotent_and_a_prefix_holds_one_dataset(
    many_shards, writer_store, location, tmp_path
) -> None:
    _published(many_shards, writer_store, location)
    again = publish_dataset(many_shards.directory, writer_store, location)
    assert again.uploaded == [] and INDEX_FILE in again.already_there
    other = tmp_path / "other"
    writer = ShardWriter(other, vocab_size=1000, eos_id=0, shard_tokens=400)
    writer.add_document([5, 6, 7])
    writer.finish(tokenizer_sha256="cd" * 32)
    with pytest.raises(DatasetError, match="own prefix"):
        publish_dataset(other, writer_store, location)


def test_loopback_data_url_is_refused_on_a_real_network(many_shards, writer_store, location, tmp_path) -> None:
    from storage import EndpointRefused

    digest = _published(many_shards, writer_store, location)
    with pytest.raises(EndpointRefused):
        open_dataset(location.url(), digest, tmp_path)  # default policy: public addresses only


# --- hostile headers (no server needed: a LocalStore holds what a hostile publisher wrote) ------


def _hostile(tmp_path: Path, raw: bytes) -> tuple[LocalStore, DataLocation, str]:
    store = LocalStore(tmp_path / "bucket")
    location = DataLocation("https://data.example", "b", "p")
    store.put(location.key(INDEX_FILE), raw)
    return store, location, hashlib.sha256(raw).hexdigest()


def _header(**changes: object) -> dict:
    header = {
        "format": "tessera-shards", "version": 1, "dtype": "uint16", "vocab_size": 1000, "eos_id": 0,
        "tokenizer_sha256": "ab" * 32, "tokenizer": "", "source": "",
        "shards": [{"name": "shard-00000", "n_tokens": 10, "n_docs": 1, "sha256": "cd" * 32}],
    }
    header.update(changes)
    return header


def _canonical(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "header",
    [
        _header(shards=[{"name": "../../etc/passwd", "n_tokens": 1, "n_docs": 1, "sha256": "cd" * 32}]),
        _header(shards=[{"name": ".hidden", "n_tokens": 1, "n_docs": 1, "sha256": "cd" * 32}]),
        _header(shards=[{"name": "a", "n_tokens": 1 << 50, "n_docs": 1, "sha256": "cd" * 32}]),
        _header(shards=[{"name": "a", "n_tokens": "10", "n_docs": 1, "sha256": "cd" * 32}]),  # strict: no strings
        _header(shards=[{"name": "a", "n_tokens": 1, "n_docs": 1, "sha256": "cd" * 32}] * 2),  # repeated name
        _header(shards=[]),
        _header(shards=[{"name": f"s{i}", "n_tokens": 1, "n_docs": 1, "sha256": "cd" * 32} for i in range(MAX_SHARDS + 1)]),
        _header(vocab_size=100_000),  # uint16 cannot hold it
        _header(eos_id=1000),
        _header(extra="field"),
        _header(source="x" * 5000),
        _header(format="pickle"),
    ],
    ids=["traversal", "dotfile", "huge-shard", "string-int", "repeated", "empty", "too-many", "dtype", "eos",
         "extra", "long-source", "format"],
)
def test_hostile_header_is_refused(tmp_path: Path, header: dict) -> None:
    store, location, digest = _hostile(tmp_path, _canonical(header))  # the digest matches: a hostile publisher
    with pytest.raises(ShardError):
        fetch_index(store, location, digest)


def test_header_bytes_that_are_not_json_or_not_canonical(tmp_path: Path) -> None:
    for raw, match in [(b"\xff\x00garbage", "not a valid shards header"),
                       (json.dumps(_header(), indent=1).encode(), "canonical")]:
        store, location, digest = _hostile(tmp_path / str(len(raw)), raw)
        with pytest.raises(ShardError, match=match):
            fetch_index(store, location, digest)
    store, location, digest = _hostile(tmp_path / "ok", _canonical(_header()))
    assert fetch_index(store, location, digest).digest == digest


def test_oversized_header_is_refused_by_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset_module, "MAX_INDEX_BYTES", 4096)
    raw = _canonical(_header(source="x" * 1900, tokenizer="t" * 190)) + b" " * 4096
    store, location, digest = _hostile(tmp_path, raw)
    with pytest.raises(ObjectTooLarge):
        fetch_index(store, location, digest)


# --- data_url ----------------------------------------------------------------------------------


def test_data_url_round_trip_and_redaction() -> None:
    url = "https://KEY:s%2Fcr%40t@acct.r2.cloudflarestorage.com/bucket/runs/a?region=auto"
    loc = DataLocation.parse(url)
    assert (loc.endpoint_url, loc.bucket, loc.prefix, loc.key_id, loc.secret) == (
        "https://acct.r2.cloudflarestorage.com", "bucket", "runs/a", "KEY", "s/cr@t")
    assert DataLocation.parse(loc.url()) == loc
    assert "cr" not in repr(loc) and "cr" not in loc.url(secret=False)
    assert loc.url(secret=False).startswith("https://KEY:***@acct")
    assert loc.key("index.json") == "runs/a/index.json"
    anonymous = DataLocation.parse("http://127.0.0.1:9000/dataset")
    assert anonymous.key_id == "" and anonymous.key("x.bin") == "x.bin"


@pytest.mark.parametrize("url", ["s3://bucket/prefix", "https://host", "https://host/", "ftp://h/b", "https://h/b?x=1"])
def test_bad_data_url_is_refused(url: str) -> None:
    with pytest.raises(DatasetError, match="data_url"):
        DataLocation.parse(url)


# --- the node's choice of data -------------------------------------------------------------------


def test_offline_local_shards_held_to_the_origin_digest(corpus_dir: Path, hparams, tmp_path: Path) -> None:
    args = {"data_url": None, "cache_dir": tmp_path, "vocab_size": hparams.model.vocab_size}
    digest = TokenShards(corpus_dir).digest
    shards = open_run_data(data_digest=digest, data_dir=corpus_dir, **args)
    assert shards.digest == digest and not isinstance(shards, RemoteShards)
    assert open_run_data(data_digest=None, data_dir=corpus_dir, **args).digest == digest
    with pytest.raises(DataDigestMismatch, match="data_digest"):
        open_run_data(data_digest="0" * 64, data_dir=corpus_dir, **args)
    with pytest.raises(DatasetError, match="tokenized with"):
        open_run_data(data_digest=digest, data_dir=corpus_dir, tokenizer="mistralai/Mistral-7B-v0.3", **args)


def test_node_reads_the_published_dataset(many_shards, writer_store, location, tmp_path) -> None:
    digest = _published(many_shards, writer_store, location)
    shards = open_run_data(data_url=location.url(), data_digest=digest, cache_dir=tmp_path, vocab_size=1000,
                           tokenizer="test-tok", allow_loopback=True)
    assert isinstance(shards, RemoteShards) and shards.digest == digest
    with pytest.raises(ShardError, match="vocabulary"):
        open_run_data(data_url=location.url(), data_digest=digest, cache_dir=tmp_path, vocab_size=500,
                      allow_loopback=True)


def test_anonymous_read_of_a_public_bucket(many_shards, tmp_path: Path) -> None:
    """A data_url without a key sends unsigned requests: SeaweedFS's ``anonymous`` identity may
    read the public bucket (and nothing more), as a public dataset bucket would allow."""
    from neurons.localnet.seaweedfs import READ_ONLY, READ_WRITE, Identity, SeaweedServer
    from storage import AccessDenied

    owner = Identity.generate("owner", READ_WRITE, ["public-data"])
    anyone = Identity("anonymous", "", "", READ_ONLY, ("public-data",))
    with SeaweedServer(tmp_path / "s3", [owner, anyone]) as server:
        location = DataLocation(server.endpoint_url, "public-data", "run", "us-east-1")
        digest = publish_dataset(many_shards.directory, server.store(owner, "public-data"), location).data_digest
        remote = open_dataset(location.url(), digest, tmp_path / "cache", policy=LOOPBACK)
        assert np.array_equal(remote.tokens(3), many_shards.tokens(3))
        with pytest.raises(AccessDenied):
            location.store(LOOPBACK).put("run/extra", b"x")  # unsigned writes are refused

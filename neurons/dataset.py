"""The run's dataset, published once to a bucket and verified shard by shard by every node.

A run's data is named by two values in its origin record: ``data_url``, where the shards lie,
and ``data_digest``, the SHA-256 of the canonical bytes of their header (``ShardIndex.digest``).
The header holds every shard's SHA-256 and token count, so the digest pins every token.

``data_url`` is an S3 location, path style::

    https://[KEY_ID:SECRET@]host[:port]/bucket[/prefix][?region=REGION]

with a read-only key pair in the user part (public by design, like a bucket commitment's read
key), or none for a bucket that allows anonymous reads. Under the prefix lie ``index.json`` (the
canonical header bytes), ``<shard>.bin`` per shard and ``tokenizer.json`` (for people; nodes never
read it). ``publish_dataset`` writes exactly that.

A node reads the header first (capped in size, its hash compared with the digest *before* it is
parsed), then fetches a shard only when a sample from it is first asked for: the size named by the
header caps the download (HEAD before GET), the bytes are hashed before they touch the cache, and
a shard whose hash differs is refused with ``ShardCorrupted`` naming it. The cache holds only
verified shards, written atomically; a cached shard is hashed again on first use in every process
(cheap next to training on it, and it catches a damaged or tampered cache), and one that fails is
removed and fetched again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import numpy as np

from neurons.progress import progress
from neurons.shards import INDEX_FILE, MAX_INDEX_BYTES, ShardEntry, ShardError, ShardIndex, TokenShards
from storage import ObjectExists, ObjectStore, ObjectTooLarge
from storage.endpoints import EndpointPolicy
from storage.s3 import S3Store

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
# A shard's download must finish within FETCH_BASE_SECONDS + its size at FETCH_MIN_RATE: a stalled
# server costs a bounded wait (StorageTimeout, retried by the node's window loop), never a hang.
FETCH_BASE_SECONDS = 30.0
FETCH_MIN_RATE = 4 << 20  # bytes per second
_HASH_CHUNK = 1 << 24


class DatasetError(ShardError):
    """The run's dataset cannot be located, does not match its digest, or a shard is damaged."""


class DataDigestMismatch(DatasetError):
    """The shards at hand are not the ones the run's origin names."""


class ShardCorrupted(DatasetError):
    """A shard's bytes do not hash to the value in the header; ``shard`` names it."""

    def __init__(self, shard: str, message: str):
        super().__init__(message)
        self.shard = shard


@dataclass(frozen=True)
class DataLocation:
    """A parsed ``data_url``: endpoint, bucket, key prefix, region and an optional read key."""

    endpoint_url: str
    bucket: str
    prefix: str = ""
    region: str = "auto"
    key_id: str = ""
    secret: str = field(default="", repr=False)

    @classmethod
    def parse(cls, url: str) -> DataLocation:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DatasetError(f"data_url {_redact(url)!r} must be http(s)://[key:secret@]host/bucket[/prefix]")
        bucket, _, prefix = parts.path.lstrip("/").partition("/")
        if not bucket:
            raise DatasetError(f"data_url {_redact(url)!r} names no bucket (path style: host/bucket/prefix)")
        query = parse_qs(parts.query)
        if set(query) - {"region"}:
            raise DatasetError(f"data_url {_redact(url)!r}: only ?region= is understood")
        host = parts.netloc.rpartition("@")[2]
        return cls(
            endpoint_url=f"{parts.scheme}://{host}",
            bucket=bucket,
            prefix=prefix.strip("/"),
            region=query.get("region", ["auto"])[0],
            key_id=unquote(parts.username or ""),
            secret=unquote(parts.password or ""),
        )

    def url(self, *, secret: bool = True) -> str:
        """The ``data_url`` back (with the secret replaced by ``***`` unless ``secret``)."""
        scheme, _, host = self.endpoint_url.partition("://")
        user = ""
        if self.key_id:
            user = f"{quote(self.key_id, safe='')}:{quote(self.secret, safe='') if secret else '***'}@"
        path = "/".join(p for p in (self.bucket, self.prefix) if p)
        query = f"?region={quote(self.region, safe='')}" if self.region != "auto" else ""
        return f"{scheme}://{user}{host}/{path}{query}"

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def store(self, policy: EndpointPolicy | None = None) -> S3Store:
        """A read-only client: signed with the read key, or unsigned when the URL has none."""
        return S3Store(
            self.endpoint_url, self.bucket, self.key_id or "", self.secret or "", self.region,
            policy=policy, anonymous=not self.key_id,
        )


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def fetch_index(store: ObjectStore, location: DataLocation, data_digest: str) -> ShardIndex:
    """The header named by ``data_digest``: its bytes hash to the digest before they are parsed."""
    where = location.url(secret=False)
    raw = store.get(location.key(INDEX_FILE), MAX_INDEX_BYTES, deadline=time.monotonic() + FETCH_BASE_SECONDS)
    found = hashlib.sha256(raw).hexdigest()
    if found != data_digest:
        raise DataDigestMismatch(
            f"{where}/{INDEX_FILE} hashes to {found}, the run's data_digest is {data_digest}: "
            "the bucket holds another dataset (or the origin names the wrong one)"
        )
    index = ShardIndex.parse(raw, f"{where}/{INDEX_FILE}")
    if index.digest != data_digest:  # same bytes, but not the canonical form every node re-derives
        raise DatasetError(f"{where}/{INDEX_FILE} is not in canonical form; republish it with publish_dataset")
    return index


class RemoteShards(TokenShards):
    """The run's shards in a bucket, fetched into ``cache_dir`` one shard at a time, on first use.

    ``fetched`` lists the shards downloaded by this reader, in order (a cached, re-verified shard
    is not downloaded). Document boundaries (``.idx``) are not published: training never needs them.
    """

    def __init__(self, store: ObjectStore, location: DataLocation, index: ShardIndex, cache_dir: Path):
        super().__init__(cache_dir, index=index)
        self.store = store
        self.location = location
        self.fetched: list[str] = []
        cache_dir.mkdir(parents=True, exist_ok=True)

    def _load_tokens(self, shard: int) -> np.ndarray:
        entry = self.index.shards[shard]
        path = self.directory / f"{entry.name}.bin"
        if path.is_file():
            if _file_sha256(path) == entry.sha256:
                return super()._load_tokens(shard)
            log.warning("cached shard %s does not match its hash; removed, fetching it again", entry.name)
            path.unlink(missing_ok=True)
        self._fetch(entry, path)
        return super()._load_tokens(shard)

    def _fetch(self, entry: ShardEntry, path: Path) -> None:
        size = entry.nbytes(self.index.dtype)
        key = self.location.key(f"{entry.name}.bin")
        deadline = time.monotonic() + FETCH_BASE_SECONDS + size / FETCH_MIN_RATE
        data = self.store.get(key, size, deadline=deadline)  # a larger object is refused by HEAD
        if len(data) != size or hashlib.sha256(data).hexdigest() != entry.sha256:
            raise ShardCorrupted(
                entry.name,
                f"shard {entry.name} at {self.location.url(secret=False)}/{entry.name}.bin "
                f"({len(data)} bytes, header says {size}) does not match its sha256 in the run's index; "
                "refused. The publisher must re-upload it (scripts/prepare_data.py --publish).",
            )
        _write_atomically(path, data)
        self.fetched.append(entry.name)
        log.info("fetched shard %s (%d bytes) from %s", entry.name, size, self.location.url(secret=False))

    def _doc_offsets(self, shard: int) -> np.ndarray:
        raise DatasetError("document boundaries (.idx) are not part of a published dataset")

    def verify(self) -> None:
        """Fetch (or re-verify) every shard: each load checks its hash."""
        with progress("fetching and verifying shards", total=len(self), min_total=2) as done:  # a terminal only
            for i in range(len(self)):
                self.tokens(i)
                done()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see no file or the whole verified file, even with several processes sharing a cache."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_dataset(
    data_url: str, data_digest: str, cache_dir: Path | str, *, policy: EndpointPolicy | None = None,
    store: ObjectStore | None = None,
) -> RemoteShards:
    """The run's shards: header fetched and checked now, each shard fetched on first use.

    ``policy`` guards the endpoint like a peer's (default: public addresses only); ``store``
    replaces the client built from the URL (tests). Shards are cached under
    ``cache_dir/<data_digest>/``.
    """
    location = DataLocation.parse(data_url)
    store = store or location.store(policy or EndpointPolicy())
    index = fetch_index(store, location, data_digest)
    return RemoteShards(store, location, index, Path(cache_dir) / data_digest)


@dataclass(frozen=True)
class PublishReport:
    data_url: str  # without the secret
    data_digest: str
    uploaded: list[str]
    already_there: list[str]
    bytes_uploaded: int


def publish_dataset(shards_dir: Path | str, store: ObjectStore, location: DataLocation) -> PublishReport:
    """Upload a local shards directory so ``open_dataset(location.url(), digest)`` reads it.

    Every shard is re-hashed first (nothing unverified is published). Shards go up first and the
    header last, so a header never names a missing shard. Objects are immutable: one already
    there is accepted only if its bytes are the ones being published, so an interrupted publish
    can be run again.
    """
    local = TokenShards(shards_dir)
    local.verify()
    uploaded, already, sent = [], [], 0
    names = [f"{entry.name}.bin" for entry in local.index.shards]
    if (local.directory / TOKENIZER_FILE).is_file():
        names.append(TOKENIZER_FILE)
    for name in names:
        data = (local.directory / name).read_bytes()
        if _put_once(store, location.key(name), data):
            uploaded.append(name)
            sent += len(data)
        else:
            already.append(name)
    header = local.index.canonical_bytes()
    if _put_once(store, location.key(INDEX_FILE), header):
        uploaded.append(INDEX_FILE)
        sent += len(header)
    else:
        already.append(INDEX_FILE)
    return PublishReport(location.url(secret=False), local.digest, uploaded, already, sent)


def _put_once(store: ObjectStore, key: str, data: bytes) -> bool:
    """Create ``key``; False if it already holds exactly ``data``; DatasetError if it holds other bytes."""
    try:
        store.put(key, data)
        return True
    except ObjectExists:
        try:
            same = store.get(key, len(data)) == data
        except ObjectTooLarge:
            same = False
        if not same:
            raise DatasetError(
                f"{key} already exists with other content: publish each dataset under its own prefix"
            ) from None
        return False


def open_run_data(
    *, data_url: str | None, data_digest: str | None, cache_dir: Path, data_dir: Path | None = None,
    vocab_size: int, tokenizer: str = "", allow_loopback: bool = False,
) -> TokenShards:
    """The shards a node trains and scores on, checked against the run's origin.

    ``data_url`` set: the published dataset (``open_dataset``, cached under ``cache_dir``), unless
    the operator gave ``data_dir``, a local copy, which must then hash to ``data_digest``. Neither:
    the embedded corpus, built under ``cache_dir`` (the offline demo), again held to
    ``data_digest`` when the origin names one. ``tokenizer`` (hparams) must match the header's
    name when both are set. ``allow_loopback`` is the local subnet's endpoint policy.
    """
    if data_dir is not None or not data_url:
        from neurons.corpus import ensure_embedded_data  # builds a tokenizer: only on this path

        shards = TokenShards(data_dir if data_dir is not None else ensure_embedded_data(cache_dir, vocab_size))
        if data_digest and shards.digest != data_digest:
            raise DataDigestMismatch(
                f"shards at {shards.directory} have digest {shards.digest}, the run's data_digest is {data_digest}: "
                "use the run's published dataset (its data_url) or a copy of it"
            )
    else:
        if not data_digest:
            raise DatasetError("the run names a data_url but no data_digest; the origin record is incomplete")
        shards = open_dataset(data_url, data_digest, cache_dir, policy=EndpointPolicy(allow_loopback=allow_loopback))
    shards.require_vocab(vocab_size)
    if tokenizer and shards.index.tokenizer and tokenizer != shards.index.tokenizer:
        raise DatasetError(
            f"the dataset was tokenized with {shards.index.tokenizer!r} but the hparams name {tokenizer!r}"
        )
    return shards

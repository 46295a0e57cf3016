"""The ObjectStore interface every node uses for its bucket and its peers' buckets.

Objects are immutable: ``put`` never overwrites (``ObjectExists``). ``get`` always takes a byte
cap and refuses oversized objects before downloading them, because peers are untrusted and a
validator must not be made to pull gigabytes. Time stamps are the *server's* LastModified, in
UTC, since upload-slot checks must not depend on any node's local clock.

Reads take an optional ``deadline``: an absolute ``time.monotonic()`` value by which the whole
operation (every request, retry, backoff and byte of the body) has ended, with its result or
``StorageTimeout``. A window's fetch derives it from the window, so a slow peer costs only its
own slot.
"""

from __future__ import annotations

import datetime as dt
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from storage.errors import InvalidKey, StorageError, StorageTimeout

MAX_KEY_BYTES = 1024  # the S3 limit; LocalStore enforces the same so keys port across backends


@dataclass(frozen=True)
class ObjectInfo:
    """What HEAD/LIST report about one object. ``last_modified`` is tz-aware UTC."""

    key: str
    size: int
    last_modified: dt.datetime

    def __post_init__(self) -> None:
        if self.last_modified.tzinfo is None:
            raise ValueError(f"ObjectInfo.last_modified for {self.key!r} must be timezone-aware")
        if self.size < 0:
            raise ValueError(f"ObjectInfo.size for {self.key!r} must be >= 0, got {self.size}")


def validate_key(key: str) -> str:
    """Reject keys that are ambiguous across backends or escape a LocalStore root.

    S3 itself accepts '..' segments and leading slashes; we refuse them everywhere so a key that
    works on one backend works on all, and so no key can name a path outside the store.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"object key must be a non-empty string, got {key!r}")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidKey(f"object key longer than {MAX_KEY_BYTES} bytes: {key[:64]!r}...")
    if key.startswith("/") or key.endswith("/"):
        raise InvalidKey(f"object key must not start or end with '/': {key!r}")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key) or "\\" in key:
        raise InvalidKey(f"object key contains a control character or backslash: {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidKey(f"object key has an empty, '.' or '..' segment: {key!r}")
    return key


def check_deadline(deadline: float | None, where: str) -> None:
    """Raise StorageTimeout when ``deadline`` (a ``time.monotonic()`` value) has passed."""
    if deadline is not None and time.monotonic() >= deadline:
        raise StorageTimeout(f"{where}: deadline passed")


def validate_max_bytes(max_bytes: int) -> int:
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    return max_bytes


class ObjectStore(ABC):
    """One bucket (or directory) of immutable objects.

    ``concurrency`` bounds the thread pool of ``delete_many``; backends set it from their
    connection-pool size so threads never queue on a socket.
    """

    concurrency: int = 8

    @abstractmethod
    def put(self, key: str, data: bytes) -> ObjectInfo:
        """Create ``key`` with ``data``; raise ObjectExists if it is already there."""

    @abstractmethod
    def get(self, key: str, max_bytes: int, *, deadline: float | None = None) -> bytes:
        """Return the object's bytes; raise ObjectTooLarge (before downloading, by HEAD) if it
        is larger than ``max_bytes``, ObjectNotFound if absent, StorageTimeout past ``deadline``."""

    @abstractmethod
    def head(self, key: str, *, deadline: float | None = None) -> ObjectInfo:
        """Size and server LastModified of ``key``; ObjectNotFound if absent."""

    @abstractmethod
    def list(self, prefix: str = "", *, deadline: float | None = None) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key (all pages, capped)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``. Idempotent: deleting a missing key is not an error (S3 cannot tell
        the two apart without an extra HEAD, and retention does not care)."""

    def delete_many(self, keys: Iterable[str]) -> dict[str, StorageError | None]:
        """Delete many objects on a bounded pool; each key maps to None (done) or its error."""
        unique = list(dict.fromkeys(keys))

        def one(key: str) -> StorageError | None:
            try:
                self.delete(key)
            except StorageError as exc:  # a per-key outcome, not a failure of the batch
                return exc
            return None

        if not unique:
            return {}
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(unique)))) as pool:
            return dict(zip(unique, pool.map(one, unique), strict=True))

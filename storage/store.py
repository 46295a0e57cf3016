"""The ObjectStore interface every node uses for its bucket and its peers' buckets.

Objects are immutable: ``put`` never overwrites (``ObjectExists``). ``get`` always takes a byte
cap and refuses oversized objects before downloading them, because peers are untrusted and a
validator must not be made to pull gigabytes. Time stamps are the *server's* LastModified, in
UTC, since upload-slot checks must not depend on any node's local clock.
"""

from __future__ import annotations

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from storage.errors import InvalidKey, StorageError

T = TypeVar("T")

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


def to_utc(when: dt.datetime) -> dt.datetime:
    """Normalise a server time stamp to tz-aware UTC (botocore returns tzlocal for listings)."""
    if when.tzinfo is None:
        raise ValueError(f"naive datetime {when!r}: the server's time zone is unknown")
    return when.astimezone(dt.UTC)


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


def validate_max_bytes(max_bytes: int) -> int:
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    return max_bytes


class ObjectStore(ABC):
    """One bucket (or directory) of immutable objects.

    ``concurrency`` bounds the thread pool of the ``*_many`` helpers; backends set it from their
    connection-pool size so threads never queue on a socket.
    """

    concurrency: int = 8

    @abstractmethod
    def put(self, key: str, data: bytes) -> ObjectInfo:
        """Create ``key`` with ``data``; raise ObjectExists if it is already there."""

    @abstractmethod
    def get(self, key: str, max_bytes: int) -> bytes:
        """Return the object's bytes; raise ObjectTooLarge (before downloading, by HEAD) if it
        is larger than ``max_bytes``, ObjectNotFound if absent."""

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size and server LastModified of ``key``; ObjectNotFound if absent."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key (all pages)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``. Idempotent: deleting a missing key is not an error (S3 cannot tell
        the two apart without an extra HEAD, and retention does not care)."""

    def get_many(self, keys: Iterable[str], max_bytes: int) -> dict[str, bytes | StorageError]:
        """Fetch many objects on a bounded pool; each key maps to its bytes or its typed error."""
        return self._map_bounded(keys, lambda key: self.get(key, max_bytes))

    def head_many(self, keys: Iterable[str]) -> dict[str, ObjectInfo | StorageError]:
        """HEAD many objects on a bounded pool; each key maps to its info or its typed error."""
        return self._map_bounded(keys, self.head)

    def delete_many(self, keys: Iterable[str]) -> dict[str, StorageError | None]:
        """Delete many objects on a bounded pool; each key maps to None (done) or its error."""

        def one(key: str) -> None:
            self.delete(key)

        return self._map_bounded(keys, one)

    def _map_bounded(self, keys: Iterable[str], fn: Callable[[str], T]) -> dict[str, T | StorageError]:
        unique = list(dict.fromkeys(keys))

        def one(key: str) -> T | StorageError:
            try:
                return fn(key)
            except StorageError as exc:  # a per-key outcome, not a failure of the batch
                return exc

        if not unique:
            return {}
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(unique)))) as pool:
            return dict(zip(unique, pool.map(one, unique), strict=True))

"""Typed storage failures.

Every backend maps its own failures onto these classes, so callers (miner upload, validator
gather, retention) can decide per kind: skip a peer whose payload is missing, stop a node whose
write key is wrong, retry later when the server is down. None of them ever carries a secret.

A peer's server is untrusted: whatever it answers (malformed headers, endless listings, a body
that drips a byte at a time, redirects to itself) ends in one of these, never in another
exception and never after the caller's deadline.
"""

from __future__ import annotations


class StorageError(RuntimeError):
    """Base class: a storage operation failed; the message names the operation, key and cause."""


class InvalidKey(StorageError, ValueError):
    """The object key is not acceptable (empty, too long, '..' segments, control characters)."""


class ObjectNotFound(StorageError):
    """No object under this key."""


class BucketNotFound(ObjectNotFound):
    """The bucket itself does not exist; a subclass of ObjectNotFound because, for a reader,
    a missing bucket means the same thing as a missing object: nothing to fetch."""


class ObjectExists(StorageError):
    """A put refused to overwrite: objects are immutable once written."""


class ObjectTooLarge(StorageError):
    """The object exceeds the caller's byte cap; refused before (or while) downloading."""

    def __init__(self, message: str, *, size: int | None, max_bytes: int) -> None:
        super().__init__(message)
        self.size = size
        self.max_bytes = max_bytes


class AccessDenied(StorageError):
    """The server refused the credentials: wrong secret, unknown key id, or a read-only key
    attempting a write."""


class StorageUnavailable(StorageError):
    """The server could not be reached or kept failing (timeouts, refused connections, 5xx)
    after the bounded retries."""


class StorageTimeout(StorageUnavailable):
    """The operation's total deadline passed (connection, retries, backoff and body included).
    A subclass of StorageUnavailable: for a caller, a server too slow to answer in time is a
    server that is not there."""


class BadResponse(StorageError):
    """The server answered something malformed: a HEAD without a size or date, a date or
    length that does not parse, a listing that is not XML, a redirect, a body past its cap."""


class ListingTooLong(BadResponse):
    """A listing went on past the page cap (or repeated a continuation token): refused rather
    than paginated forever into growing memory."""


class EndpointRefused(StorageError):
    """The endpoint (URL, host, port or region) is malformed, or its host resolves to an
    address a node must not connect to for a peer (loopback, link-local, private, metadata).
    Refused before any connection is opened."""

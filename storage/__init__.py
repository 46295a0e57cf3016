"""Object storage for tessera: the ObjectStore interface and its S3 and local-directory backends.

Import the concrete pieces from their modules (``storage.s3``, ``storage.local``,
``storage.endpoints``); the names below are the ones every caller needs.
"""

from storage.errors import (
    AccessDenied,
    BadResponse,
    BucketNotFound,
    EndpointRefused,
    InvalidKey,
    ListingTooLong,
    ObjectExists,
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
    StorageTimeout,
    StorageUnavailable,
)
from storage.store import ObjectInfo, ObjectStore

__all__ = [
    "AccessDenied",
    "BadResponse",
    "BucketNotFound",
    "EndpointRefused",
    "InvalidKey",
    "ListingTooLong",
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectTooLarge",
    "StorageError",
    "StorageTimeout",
    "StorageUnavailable",
]

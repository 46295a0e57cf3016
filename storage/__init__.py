"""Object storage for tessera: the ObjectStore interface and its S3 and local-directory backends.

Import the concrete pieces from their modules (``storage.s3``, ``storage.local``,
``storage.seaweedfs``); the names below are the ones every caller needs.
"""

from storage.errors import (
    AccessDenied,
    BucketNotFound,
    InvalidKey,
    ObjectExists,
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
    StorageUnavailable,
)
from storage.store import ObjectInfo, ObjectStore

__all__ = [
    "AccessDenied",
    "BucketNotFound",
    "InvalidKey",
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectTooLarge",
    "StorageError",
    "StorageUnavailable",
]

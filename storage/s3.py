"""S3Store: the ObjectStore on boto3, for any S3-compatible endpoint.

Tested against SeaweedFS 4.x (real SigV4) and moto; written for Cloudflare R2
(``https://<account>.r2.cloudflarestorage.com``, region ``auto``), MinIO and AWS.

Conditional put: ``If-None-Match: *`` on PutObject. SeaweedFS 4.48, R2, MinIO and AWS (since
2024) refuse an existing key with 412, atomically (the SeaweedFS check is exercised with 16
concurrent writers in the integration tests). For a server that silently ignores the header,
``conditional_put=False`` falls back to HEAD-then-PUT, which has a race: two writers that both
HEAD before either PUTs both succeed and the later one wins. A node only writes its own bucket,
so the race needs two writers holding the same write key, i.e. the operator's own mistake.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from storage.errors import ObjectExists, ObjectNotFound, ObjectTooLarge, StorageError
from storage.retry import RetryPolicy, call_with_retry
from storage.s3_errors import is_transient, map_error
from storage.store import ObjectInfo, ObjectStore, to_utc, validate_key, validate_max_bytes

T = TypeVar("T")

_READ_CHUNK = 1 << 20


class S3Config(BaseModel):
    """Where a bucket lives and how to sign for it. The secret never appears in repr/logs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = Field(
        description="e.g. https://<account>.r2.cloudflarestorage.com; None = AWS"
    )
    bucket: str = Field(min_length=3, max_length=63)
    access_key_id: str = Field(min_length=1)
    secret_access_key: SecretStr
    region: str = "auto"
    addressing_style: Literal["path", "virtual", "auto"] = "path"


def r2_endpoint(account_id: str) -> str:
    """The S3 endpoint of a Cloudflare R2 account."""
    return f"https://{account_id}.r2.cloudflarestorage.com"


class S3Store(ObjectStore):
    """One bucket on an S3-compatible server.

    Timeouts bound each HTTP request; ``retry`` bounds how often a transient failure is retried
    (botocore's own retries are switched off so there is exactly one policy); ``concurrency`` is
    both the connection-pool size and the worker count of ``get_many``/``head_many``.
    """

    def __init__(
        self,
        endpoint_url: str | None,
        bucket: str,
        access_key_id: str,
        secret_access_key: str,
        region: str = "auto",
        *,
        addressing_style: Literal["path", "virtual", "auto"] = "path",
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        concurrency: int = 8,
        conditional_put: bool = True,
        list_page_size: int = 1000,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.access_key_id = access_key_id
        self.region = region
        self.concurrency = concurrency
        self.conditional_put = conditional_put
        self._retry = retry or RetryPolicy()
        self._page_size = list_page_size
        self._sleep = sleep
        config = Config(
            signature_version="s3v4",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=concurrency,
            s3={"addressing_style": addressing_style},
            # aws-chunked upload trailers are not understood by every S3-compatible server;
            # send checksums only where the API requires them.
            request_checksum_calculation="when_required",
        )
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
            config=config,
        )

    @classmethod
    def from_config(cls, config: S3Config, **options: Any) -> S3Store:
        return cls(
            config.endpoint_url,
            config.bucket,
            config.access_key_id,
            config.secret_access_key.get_secret_value(),
            config.region,
            addressing_style=config.addressing_style,
            **options,
        )

    def __repr__(self) -> str:
        # the secret is deliberately absent; the key id alone grants nothing
        return (
            f"S3Store(endpoint_url={self.endpoint_url!r}, bucket={self.bucket!r}, "
            f"access_key_id={self.access_key_id!r}, region={self.region!r})"
        )

    # -- plumbing -----------------------------------------------------------------------------

    def _where(self, op: str, key: str) -> str:
        return f"{op} s3://{self.bucket}/{key} at {self.endpoint_url or 'AWS'}"

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        try:
            return call_with_retry(fn, self._retry, (ClientError, BotoCoreError), is_transient, self._sleep)
        except (ClientError, BotoCoreError) as exc:
            raise map_error(exc, self._where(op, key)) from exc

    # -- ObjectStore --------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> ObjectInfo:
        validate_key(key)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": bytes(data)}
        if self.conditional_put:
            kwargs["IfNoneMatch"] = "*"
        elif self._exists(key):
            raise ObjectExists(f"{self._where('put', key)}: already exists (HEAD before PUT)")
        attempts = 0

        def once() -> dict[str, Any]:
            nonlocal attempts
            attempts += 1
            return self._client.put_object(**kwargs)

        try:
            self._call("put", key, once)
        except ObjectExists:
            # A retried PUT whose first try landed but whose answer was lost sees its own object:
            # that is success, recognised by the content MD5 (the ETag of a single-part upload).
            if attempts < 2 or not self._etag_matches(key, data):
                raise
        return self.head(key)

    def _exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    def _etag_matches(self, key: str, data: bytes) -> bool:
        response = self._call("head", key, lambda: self._client.head_object(Bucket=self.bucket, Key=key))
        etag = str(response.get("ETag", "")).strip('"')
        return etag == hashlib.md5(data, usedforsecurity=False).hexdigest()

    def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        response = self._call("head", key, lambda: self._client.head_object(Bucket=self.bucket, Key=key))
        return ObjectInfo(key, int(response["ContentLength"]), to_utc(response["LastModified"]))

    def get(self, key: str, max_bytes: int) -> bytes:
        validate_max_bytes(max_bytes)
        info = self.head(key)
        if info.size > max_bytes:
            raise ObjectTooLarge(
                f"{self._where('get', key)}: {info.size} bytes > cap {max_bytes} (refused by HEAD)",
                size=info.size,
                max_bytes=max_bytes,
            )
        return self._call("get", key, lambda: self._download(key, max_bytes))

    def _download(self, key: str, max_bytes: int) -> bytes:
        """GET with the cap enforced on the stream too: HEAD and GET are two requests, and an
        untrusted bucket may replace the object (or lie in HEAD) between them."""
        body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            parts: list[bytes] = []
            received = 0
            while chunk := body.read(min(_READ_CHUNK, max_bytes + 1 - received)):
                parts.append(chunk)
                received += len(chunk)
                if received > max_bytes:
                    raise ObjectTooLarge(
                        f"{self._where('get', key)}: body exceeds cap {max_bytes} while streaming",
                        size=None,
                        max_bytes=max_bytes,
                    )
            return b"".join(parts)
        finally:
            body.close()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        token: str | None = None
        while True:
            request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": self._page_size}
            if token:
                request["ContinuationToken"] = token
            page = self._call("list", prefix, functools.partial(self._client.list_objects_v2, **request))
            for item in page.get("Contents", []):
                found.append(ObjectInfo(item["Key"], int(item["Size"]), to_utc(item["LastModified"])))
            if not page.get("IsTruncated"):
                return sorted(found, key=lambda info: info.key)
            token = page.get("NextContinuationToken")
            if not token:
                raise StorageError(
                    f"{self._where('list', prefix)}: truncated page without a continuation token"
                )

    def delete(self, key: str) -> None:
        validate_key(key)
        self._call("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=key))

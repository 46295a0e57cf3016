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

import datetime as dt
import functools
import hashlib
import socket
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import boto3
from botocore import UNSIGNED
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from storage.bounded_http import BoundedSender, current_scope, deadline_scope
from storage.endpoints import EndpointPolicy, Resolver, check_endpoint
from storage.errors import (
    BadResponse,
    EndpointRefused,
    ListingTooLong,
    ObjectExists,
    ObjectNotFound,
    ObjectTooLarge,
    StorageError,
    StorageTimeout,
)
from storage.retry import RetryPolicy, call_with_retry
from storage.s3_errors import is_transient, map_error
from storage.store import ObjectInfo, ObjectStore, validate_key, validate_max_bytes

T = TypeVar("T")

_READ_CHUNK = 1 << 16  # small reads, so a deadline is checked often while a body streams in
DEFAULT_MAX_PAGES = 128  # 128 pages of 1000 keys: room for 100k objects, then ListingTooLong


class S3Store(ObjectStore):
    """One bucket on an S3-compatible server.

    Timeouts bound each HTTP request; ``retry`` bounds how often a transient failure is retried
    (botocore's own retries are switched off so there is exactly one policy); ``concurrency`` is
    the connection-pool size and the worker count of ``delete_many``.

    A *peer* store (``policy`` given) treats the server as hostile: its endpoint is checked
    against the policy when the client is built and before every request, and every request is
    sent by ``storage.bounded_http``. Any operation given a ``deadline`` (an absolute
    ``time.monotonic()`` value) ends by then with its result or ``StorageTimeout``, retries,
    backoff, connection and a dripping body included. Whatever a server answers, ``head``,
    ``get`` and ``list`` return or raise a ``StorageError``; ``max_pages`` caps a listing and
    ``max_response_bytes`` any body read whole (a listing page, an error document).
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
        max_pages: int = DEFAULT_MAX_PAGES,
        max_response_bytes: int = 8 << 20,
        policy: EndpointPolicy | None = None,
        resolve: Resolver = socket.getaddrinfo,
        sleep: Callable[[float], None] = time.sleep,
        anonymous: bool = False,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_pages < 1 or list_page_size < 1:
            raise ValueError("max_pages and list_page_size must be >= 1")
        self.endpoint_url = endpoint_url
        self.bucket = bucket
        self.access_key_id = access_key_id
        self.region = region
        self.concurrency = concurrency
        self.conditional_put = conditional_put
        self._retry = retry or RetryPolicy()
        self._page_size = list_page_size
        self._max_pages = max_pages
        self._policy = policy
        self._sleep = sleep
        if policy is not None and endpoint_url is not None:
            check_endpoint(endpoint_url, policy, resolve)  # refused before any client exists
        config = Config(
            # anonymous: unsigned requests, for a public bucket (the run's published dataset)
            signature_version=UNSIGNED if anonymous else "s3v4",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "total_max_attempts": 1},
            max_pool_connections=concurrency,
            s3={"addressing_style": addressing_style},
            # aws-chunked upload trailers are not understood by every S3-compatible server;
            # send checksums only where the API requires them.
            request_checksum_calculation="when_required",
        )
        try:
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=endpoint_url,
                aws_access_key_id=access_key_id,
                aws_secret_access_key=secret_access_key,
                region_name=region,
                config=config,
            )
        except (BotoCoreError, ValueError) as exc:  # an invalid region or endpoint botocore refuses
            raise EndpointRefused(
                f"cannot build an S3 client for {endpoint_url!r} (region {region!r}): {type(exc).__name__}: {exc}"
            ) from exc
        self._sender = BoundedSender(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_connections=concurrency,
            max_response_bytes=max_response_bytes,
            policy=policy,
            resolve=resolve,
        )
        self._client.meta.events.register("before-send.s3", self._before_send)

    def __repr__(self) -> str:
        # the secret is deliberately absent; the key id alone grants nothing
        return (
            f"S3Store(endpoint_url={self.endpoint_url!r}, bucket={self.bucket!r}, "
            f"access_key_id={self.access_key_id!r}, region={self.region!r})"
        )

    # -- plumbing -----------------------------------------------------------------------------

    def _where(self, op: str, key: str) -> str:
        return f"{op} s3://{self.bucket}/{key} at {self.endpoint_url or 'AWS'}"

    def _before_send(self, request: AWSPreparedRequest, **_kwargs: Any) -> AWSResponse | None:
        """botocore's ``before-send`` hook: a response returned here is used instead of sending.

        A peer store always sends through the bounded sender; the node's own (trusted) store
        only when the operation has a deadline, and otherwise keeps botocore's sender (proxies,
        100-continue on large uploads).
        """
        scope = current_scope()
        if self._policy is None and (scope is None or scope.deadline is None):
            return None
        return self._sender.send(request)

    def _call(self, op: str, key: str, fn: Callable[[], T], deadline: float | None = None) -> T:
        """Run one request (with retries) under ``deadline``; every failure becomes typed.

        This is the one place where a server's answer turns into a StorageError: botocore's own
        failures are mapped by ``map_error``; anything else raised while sending, parsing or
        checking the answer (a KeyError for a missing header, a ValueError or OverflowError from
        a date, a RecursionError from botocore following redirects) is a ``BadResponse`` naming
        the exception type, so that no answer, however malformed, leaves as another exception.
        After the deadline every failure is a ``StorageTimeout``.
        """
        where = self._where(op, key)
        with deadline_scope(deadline) as scope:
            try:
                return call_with_retry(
                    fn, self._retry, (ClientError, BotoCoreError), is_transient, self._sleep, scope.deadline
                )
            except (StorageTimeout, BadResponse) as exc:
                raise type(exc)(f"{where}: {exc}") from exc
            except StorageError:
                raise
            except (ClientError, BotoCoreError) as exc:
                if scope.expired():
                    raise StorageTimeout(f"{where}: deadline passed ({type(exc).__name__})") from exc
                raise map_error(exc, where) from exc
            except Exception as exc:  # noqa: BLE001 -- the boundary described in the docstring
                if scope.expired():
                    raise StorageTimeout(f"{where}: deadline passed ({type(exc).__name__})") from exc
                raise BadResponse(f"{where}: malformed answer ({type(exc).__name__}: {exc})") from exc

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

    def head(self, key: str, *, deadline: float | None = None) -> ObjectInfo:
        validate_key(key)

        def once() -> ObjectInfo:
            response = self._client.head_object(Bucket=self.bucket, Key=key)
            return _object_info(key, response.get("ContentLength"), response.get("LastModified"))

        return self._call("head", key, once, deadline)

    def get(self, key: str, max_bytes: int, *, deadline: float | None = None) -> bytes:
        validate_max_bytes(max_bytes)
        info = self.head(key, deadline=deadline)
        if info.size > max_bytes:
            raise ObjectTooLarge(
                f"{self._where('get', key)}: {info.size} bytes > cap {max_bytes} (refused by HEAD)",
                size=info.size,
                max_bytes=max_bytes,
            )
        return self._call("get", key, lambda: self._download(key, max_bytes), deadline)

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

    def list(self, prefix: str = "", *, deadline: float | None = None) -> list[ObjectInfo]:
        """All pages, at most ``max_pages`` of them; a listing that goes on (or repeats a
        continuation token) is ``ListingTooLong``, never an endless loop."""
        found: list[ObjectInfo] = []
        seen: set[str] = set()
        token: str | None = None
        for _page in range(self._max_pages):
            request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": self._page_size}
            if token is not None:
                request["ContinuationToken"] = token
            infos, token = self._call("list", prefix, functools.partial(self._list_page, request, prefix), deadline)
            found.extend(infos)
            if token is None:
                return sorted(found, key=lambda info: info.key)
            if token in seen:
                raise ListingTooLong(f"{self._where('list', prefix)}: continuation token repeated")
            seen.add(token)
        raise ListingTooLong(f"{self._where('list', prefix)}: more than {self._max_pages} pages")

    def _list_page(self, request: dict[str, Any], prefix: str) -> tuple[list[ObjectInfo], str | None]:
        """One page: its objects and the next token (None on the last page)."""
        page = self._client.list_objects_v2(**request)
        contents = page.get("Contents") or []
        if len(contents) > self._page_size:
            raise BadResponse(f"page of {len(contents)} keys, asked for at most {self._page_size}")
        infos = []
        for item in contents:
            key = item.get("Key")
            if not isinstance(key, str) or not key.startswith(prefix):
                raise BadResponse(f"listed key {str(key)[:80]!r} is not under the prefix")
            infos.append(_object_info(key, item.get("Size"), item.get("LastModified")))
        if not page.get("IsTruncated"):
            return infos, None
        token = page.get("NextContinuationToken")
        if not isinstance(token, str) or not token:
            raise BadResponse("truncated page without a continuation token")
        return infos, token

    def delete(self, key: str) -> None:
        validate_key(key)
        self._call("delete", key, lambda: self._client.delete_object(Bucket=self.bucket, Key=key))


def _object_info(key: str, size: object, last_modified: object) -> ObjectInfo:
    """An ObjectInfo from a server's answer, or BadResponse saying what is wrong with it.

    A time far in the future is returned as it is (the slot check refuses it as late); only a
    time without a zone, which cannot be placed at all, is refused here.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadResponse(f"size {size!r} of {key!r} is not a byte count")
    if not isinstance(last_modified, dt.datetime) or last_modified.tzinfo is None:
        raise BadResponse(f"LastModified {last_modified!r} of {key!r} is not a time with a zone")
    return ObjectInfo(key, size, last_modified.astimezone(dt.UTC))

"""HTTP for untrusted S3 servers: every request bounded by the operation's deadline, and sent
only to an address the endpoint policy allowed.

botocore's own sender bounds each socket call (connect timeout, read timeout) but not the whole:
``body.read(n)`` and header parsing loop until they have what they want, so a server that sends
one byte every few seconds holds a read for as long as it likes, and retries multiply that. Here
``S3Store`` opens a ``deadline_scope`` around each operation; inside it

- ``BoundedSender`` sends botocore's prepared request itself (through botocore's documented
  ``before-send`` event) with connect/read timeouts of min(configured, time left), follows no
  redirect, connects to the checked address (not a second DNS answer), and caps the size of
  any body botocore reads whole (listings, error documents);
- a watchdog timer shuts down every socket the operation used when its deadline passes, so a
  read blocked in the middle of a dripping body, header or chunk line returns at once;
- the body wrapper checks the deadline between reads, so a body cut short by the watchdog is
  a ``StorageTimeout`` and never a short object.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)
from botocore.httpsession import get_cert_path
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, Timeout
from urllib3 import exceptions as u3
from urllib3.connection import HTTPConnection, HTTPSConnection

from storage.endpoints import RESOLVE_TIMEOUT, EndpointPolicy, Resolver, check_endpoint, parse_endpoint
from storage.errors import BadResponse, StorageTimeout

_local = threading.local()
_MAX_POOLS = 8  # per sender; a host whose addresses keep changing cannot grow it without bound


class _Scope:
    """One operation's deadline and the connections it used; the watchdog shuts them down."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.fired = False
        self._connections: list[HTTPConnection] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        if deadline is not None:
            self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
            self._timer.daemon = True
            self._timer.start()

    def left(self) -> float | None:
        """Seconds until the deadline (None = no deadline); raises StorageTimeout once it passed."""
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0 or self.fired:
            raise StorageTimeout("deadline passed")
        return left

    def expired(self) -> bool:
        return self.fired or (self.deadline is not None and time.monotonic() >= self.deadline)

    def attach(self, connection: HTTPConnection) -> None:
        with self._lock:
            self._connections.append(connection)
            fired = self.fired
        if fired:
            _shutdown(connection)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            connections = list(self._connections)
        for connection in connections:
            _shutdown(connection)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _shutdown(connection: HTTPConnection) -> None:
    # shutdown (not close) wakes a recv blocked in another thread; the owner closes afterwards
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def deadline_scope(deadline: float | None) -> Iterator[_Scope]:
    """Bound everything this thread sends through a BoundedSender until the block ends.

    Nested scopes (``put`` calls ``head``) keep the earlier deadline when it is sooner.
    """
    outer: _Scope | None = getattr(_local, "scope", None)
    if outer is not None and outer.deadline is not None and (deadline is None or outer.deadline < deadline):
        deadline = outer.deadline
    scope = _Scope(deadline)
    _local.scope = scope
    try:
        yield scope
    finally:
        scope.close()
        _local.scope = outer


def current_scope() -> _Scope | None:
    return getattr(_local, "scope", None)


class _WatchedMixin:
    """Registers the connection with the calling thread's scope before each request on it."""

    def request(self, *args: Any, **kwargs: Any) -> Any:
        scope = current_scope()
        if scope is not None:
            scope.attach(self)  # type: ignore[arg-type]
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_WatchedMixin, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedMixin, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class BoundedBody:
    """The response body botocore reads, bounded by the scope's deadline and, where botocore
    reads it whole (``stream``), by ``max_bytes``."""

    def __init__(self, response: Any, scope: _Scope | None, max_bytes: int) -> None:
        self._response = response
        self._scope = scope
        self._max_bytes = max_bytes

    def readable(self) -> bool:
        return True

    def read(self, amt: int | None = None) -> bytes:
        if amt is None:
            return b"".join(self.stream())
        if self._scope is not None:
            self._scope.left()
        try:
            # read1: one socket read at most, so the deadline is checked between small reads
            data = self._response.read1(amt)
        except (u3.HTTPError, OSError) as exc:
            if self._scope is not None and self._scope.expired():
                raise StorageTimeout("deadline passed while reading the body") from exc
            raise _as_botocore(exc, self._response.geturl() or "") from exc
        if self._scope is not None and self._scope.expired():
            # the watchdog may have cut the body short: never hand back a truncated object
            raise StorageTimeout("deadline passed while reading the body")
        return data

    def stream(self, amt: int = 1 << 16) -> Iterator[bytes]:
        total = 0
        while chunk := self.read(amt):
            total += len(chunk)
            if total > self._max_bytes:
                raise BadResponse(f"response body longer than {self._max_bytes} bytes")
            yield chunk

    def close(self) -> None:
        self._response.close()
        self._response.release_conn()


class BoundedSender:
    """Sends botocore's prepared requests for one S3Store (see the module docstring).

    ``policy`` (peer stores only) re-checks the endpoint before every request and pins the
    connection to the checked address; without it the host name is resolved by the connection.
    """

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        max_response_bytes: int,
        policy: EndpointPolicy | None = None,
        resolve: Resolver = socket.getaddrinfo,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_connections = max_connections
        self._max_response_bytes = max_response_bytes
        self._policy = policy
        self._resolve = resolve
        self._pools: dict[tuple[str, str, int, str], HTTPConnectionPool] = {}
        self._lock = threading.Lock()

    def send(self, request: AWSPreparedRequest) -> AWSResponse:
        scope = current_scope()
        origin, target = _split(request.url)
        if self._policy is not None:
            left = scope.left() if scope is not None else None
            resolve_timeout = _bounded(RESOLVE_TIMEOUT, left)
            endpoint, addresses = check_endpoint(origin, self._policy, self._resolve, resolve_timeout)
            address = addresses[0]
        else:
            endpoint = parse_endpoint(origin)
            address = endpoint.host
        left = scope.left() if scope is not None else None
        timeout = Timeout(connect=_bounded(self._connect_timeout, left), read=_bounded(self._read_timeout, left))
        headers = {name: value for name, value in request.headers.items() if name.lower() != "expect"}
        headers["Host"] = endpoint.host_header  # what botocore signed; the URL may be an address now
        pool = self._pool(endpoint.scheme, address, endpoint.port, endpoint.host)
        try:
            response = pool.urlopen(
                request.method,
                target,
                body=request.body,
                headers=headers,
                retries=False,
                redirect=False,  # a peer's redirect is an answer, not an instruction
                assert_same_host=False,
                preload_content=False,
                decode_content=False,
                chunked=str(headers.get("Transfer-Encoding", "")).lower() == "chunked",
                enforce_content_length=False,
                timeout=timeout,
            )
        except (u3.HTTPError, OSError) as exc:
            if scope is not None and scope.expired():
                raise StorageTimeout("deadline passed before the server answered") from exc
            raise _as_botocore(exc, request.url) from exc
        body = BoundedBody(response, scope, self._max_response_bytes)
        answer = AWSResponse(request.url, response.status, response.headers, body)
        if not request.stream_output:
            answer.content  # noqa: B018 -- read now, as botocore's sender does, under the deadline
        return answer

    def _pool(self, scheme: str, address: str, port: int, host: str) -> HTTPConnectionPool:
        key = (scheme, address, port, host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                if len(self._pools) >= _MAX_POOLS:
                    for old in self._pools.values():
                        old.close()
                    self._pools.clear()
                pool = self._new_pool(scheme, address, port, host)
                self._pools[key] = pool
            return pool

    def _new_pool(self, scheme: str, address: str, port: int, host: str) -> HTTPConnectionPool:
        common: dict[str, Any] = {"maxsize": self._max_connections, "block": False, "retries": False}
        if scheme == "http":
            return _Pool(address, port, **common)
        # the certificate is checked against the host name, whatever address we connect to
        return _TLSPool(
            address,
            port,
            cert_reqs="CERT_REQUIRED",
            ca_certs=get_cert_path(True),
            server_hostname=host,
            assert_hostname=host,
            **common,
        )

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.close()
            self._pools.clear()


def _bounded(configured: float, left: float | None) -> float:
    return configured if left is None else max(0.001, min(configured, left))


def _split(url: str) -> tuple[str, str]:
    """botocore's request URL as (scheme://authority, path?query): the pool takes the first
    (checked as an endpoint), the request line the second."""
    scheme, sep, rest = url.partition("://")
    slash = rest.find("/")
    authority, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    return f"{scheme}{sep}{authority}", target


def _as_botocore(exc: BaseException, url: str) -> Exception:
    """The botocore exception botocore's own sender raises for this urllib3 failure, so that
    ``storage.s3_errors`` classifies both senders' failures the same way."""
    if isinstance(exc, u3.NewConnectionError | socket.gaierror | ConnectionRefusedError):
        return EndpointConnectionError(endpoint_url=url, error=exc)
    if isinstance(exc, u3.ConnectTimeoutError):
        return ConnectTimeoutError(endpoint_url=url, error=exc)
    if isinstance(exc, u3.ReadTimeoutError | TimeoutError):
        return ReadTimeoutError(endpoint_url=url, error=exc)
    if isinstance(exc, u3.ProtocolError | ConnectionError):
        return ConnectionClosedError(endpoint_url=url, error=exc)
    return HTTPClientError(error=exc)

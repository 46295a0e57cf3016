"""A hostile S3 endpoint on loopback: what a peer can make its committed endpoint answer.

The ``server`` adversary commits this server's URL instead of the real S3 server's, so every
honest node that fetches its payload talks to it. Object requests (HEAD/GET of a key) rotate
through ``BEHAVIOURS``, one per request, so each node meets several of them; a listing request
(``?list-type=2`` or the bucket root) always gets an endless, ever-truncated listing.

Bounded by construction: it binds 127.0.0.1 only; a stall (drip, hang) ends after
``stall_seconds`` or when the server closes, whichever comes first; a body is never longer than
``MAX_BODY_BYTES``; request reads time out. It only ever answers, never connects anywhere.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import Counter
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

BEHAVIOURS = ("drip", "no_headers", "bad_headers", "redirect_loop", "hang", "huge_length")
LISTING = "endless_listing"
MAX_BODY_BYTES = 4 << 20  # above any payload cap, small enough not to hog two shared cores
DRIP_INTERVAL = 1.0  # seconds between dripped bytes: slow enough to dodge per-read timeouts
LISTING_PAGE = 1000

_BAD_HEADERS = (  # (Last-Modified, Content-Length), each pair broken in its own way
    ("Fri, 31 Dec 9999 23:59:59 GMT", "18000"),
    ("not a date", "18000"),
    (None, "-5"),
    ("Thu, 01 Jan 1970 00:00:00 GMT", "eighteen thousand"),
    (None, "99999999999999999999999999"),
)


class HostileS3Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler must never keep the process alive

    def __init__(self, stall_seconds: float = 60.0, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.stall_seconds = stall_seconds
        self.closing = threading.Event()
        self.served: Counter[str] = Counter()
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_behaviour(self, listing: bool) -> str:
        with self._lock:
            behaviour = LISTING if listing else BEHAVIOURS[next(self._turn) % len(BEHAVIOURS)]
            self.served[behaviour] += 1
        return behaviour

    def start(self) -> HostileS3Server:
        self._thread = threading.Thread(target=self.serve_forever, name="hostile-s3", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self.closing.set()  # ends every stall at its next tick
        self.shutdown()
        self.server_close()

    def __enter__(self) -> HostileS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Handler(BaseHTTPRequestHandler):
    server: HostileS3Server
    protocol_version = "HTTP/1.1"
    timeout = 10.0  # reading a request line or header: a client cannot park a thread forever

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(head=False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base signature)
        log.debug("hostile s3 %s: " + format, self.client_address[0], *args)

    def _answer(self, head: bool) -> None:
        url = urlsplit(self.path)
        listing = "list-type" in parse_qs(url.query) or url.path.strip("/").count("/") == 0
        behaviour = self.server.next_behaviour(listing)
        self.close_connection = True  # every answer below is broken; never reuse the socket
        try:
            getattr(self, "_" + behaviour)(head)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on us: exactly what its deadline should make it do

    # --- behaviours ----------------------------------------------------------------------

    def _drip(self, head: bool) -> None:
        """HEAD: the status line and headers a byte at a time. GET: prompt headers, dripped body."""
        headers = self._status_and_headers(200, {"Content-Length": "18000", "Last-Modified": _now()})
        if head:
            self._stall_writing(headers)
            return
        self.wfile.write(headers)
        self._stall_writing(b"\0" * 18000)

    def _no_headers(self, head: bool) -> None:
        """200 without Content-Length, Last-Modified or ETag; a GET body ends when we close."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        if not head:
            self.wfile.write(secrets.token_bytes(4096))

    def _bad_headers(self, head: bool) -> None:
        """Unparsable or absurd dates and lengths, one pair per request."""
        last_modified, length = _BAD_HEADERS[self.server.served["bad_headers"] % len(_BAD_HEADERS)]
        fields = {"Content-Length": length, "ETag": '"0"'}
        if last_modified is not None:
            fields["Last-Modified"] = last_modified
        self.wfile.write(self._status_and_headers(200, fields))
        if not head:
            self.wfile.write(secrets.token_bytes(1024))

    def _redirect_loop(self, head: bool) -> None:
        """S3's region redirect, pointing back at the same URL for ever."""
        body = b"" if head else (
            b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>PermanentRedirect</Code>"
            b"<Message>use the other region</Message><Endpoint>127.0.0.1</Endpoint></Error>"
        )
        fields = {
            "Location": self.path, "x-amz-bucket-region": "us-west-2",
            "Content-Length": str(len(body)), "Content-Type": "application/xml",
        }
        self.wfile.write(self._status_and_headers(301, fields) + body)

    def _hang(self, head: bool) -> None:
        """Read the request, then say nothing until the stall ends."""
        self.server.closing.wait(self.server.stall_seconds)

    def _huge_length(self, head: bool) -> None:
        """A 1 TB object: HEAD says so; GET streams zeros until ``MAX_BODY_BYTES``, then closes."""
        self.wfile.write(self._status_and_headers(200, {"Content-Length": str(10**12), "Last-Modified": _now()}))
        if head:
            return
        chunk = bytes(64 << 10)
        for _ in range(MAX_BODY_BYTES // len(chunk)):
            self.wfile.write(chunk)

    def _endless_listing(self, head: bool) -> None:
        """A full page of fresh keys, always truncated, always with a new continuation token."""
        prefix = parse_qs(urlsplit(self.path).query).get("prefix", [""])[0]
        start = self.server.served[LISTING] * LISTING_PAGE
        keys = "".join(
            f"<Contents><Key>{prefix}{n:012d}.safetensors</Key><Size>18000</Size>"
            f"<LastModified>2026-01-01T00:00:00.000Z</LastModified></Contents>"
            for n in range(start, start + LISTING_PAGE)
        )
        body = (
            "<?xml version='1.0' encoding='UTF-8'?><ListBucketResult><Name>b</Name>"
            f"<Prefix>{prefix}</Prefix><KeyCount>{LISTING_PAGE}</KeyCount><MaxKeys>{LISTING_PAGE}</MaxKeys>"
            f"<IsTruncated>true</IsTruncated><NextContinuationToken>{secrets.token_hex(16)}</NextContinuationToken>"
            f"{keys}</ListBucketResult>"
        ).encode()
        fields = {"Content-Length": str(len(body)), "Content-Type": "application/xml"}
        self.wfile.write(self._status_and_headers(200, fields) + (b"" if head else body))

    # --- helpers ---------------------------------------------------------------------------

    def _status_and_headers(self, status: int, fields: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}"]
        lines += [f"{k}: {v}" for k, v in {**fields, "Connection": "close"}.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _stall_writing(self, data: bytes) -> None:
        """One byte per ``DRIP_INTERVAL`` until the data, the stall or the client runs out."""
        deadline = time.monotonic() + self.server.stall_seconds
        for i in range(len(data)):
            if time.monotonic() > deadline or self.server.closing.wait(DRIP_INTERVAL):
                return
            self.wfile.write(data[i : i + 1])


def _now() -> str:
    return formatdate(time.time(), usegmt=True)

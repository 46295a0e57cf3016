"""A small hostile S3 server on 127.0.0.1 for the storage tests: one misbehaviour per server.

Every mode answers HEAD/GET of any key and ListObjectsV2 (``?list-type=2``); the mode decides
how it lies. Bounded by construction: it binds loopback only, every stall (drip, hang) ends
after ``stall_seconds`` or when the server is closed, request reads time out, and it never
connects anywhere. Use it as a context manager; ``seen`` records (method, path, Host header).
"""

from __future__ import annotations

import itertools
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

GOOD_DATE = formatdate(1_735_689_600, usegmt=True)  # 2025-01-01T00:00:00Z
BODY = b"0123456789"

# HEAD (and GET) headers per header mode: (Last-Modified, Content-Length); None = left out
HEADER_MODES: dict[str, tuple[str | None, str | None]] = {
    "no_last_modified": (None, "10"),
    "no_content_length": (GOOD_DATE, None),
    "negative_length": (GOOD_DATE, "-5"),
    "text_length": (GOOD_DATE, "ten"),
    "garbage_date": ("not a date at all", "10"),
    "naive_date": ("2025-01-01 00:00:00", "10"),
    "overflow_date": ("Fri, 31 Dec 99999 23:59:59 GMT", "10"),
    "far_future_date": ("Fri, 31 Dec 9999 23:59:59 GMT", "10"),
    "huge_length": (GOOD_DATE, str(10**30)),
}
MODES = (
    *HEADER_MODES,
    "ok",
    "redirect_301",
    "redirect_307",
    "drip",  # GET body: one byte every ``drip_interval`` seconds
    "drip_headers",  # the status line and headers, one byte at a time
    "hang",  # reads the request, never answers
    "always_503",
    "endless_listing",  # every page truncated, with a new token
    "repeated_token",  # every page truncated, with the same token
    "not_xml",  # a listing (and error bodies) that is not XML
    "short_body",  # GET: Content-Length far above the bytes sent, then close
    "oversized_page",  # a listing page with more keys than asked for
)


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True  # a stalled handler must never keep the test process alive

    def __init__(self, mode: str, *, stall_seconds: float = 8.0, drip_interval: float = 0.5) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        super().__init__(("127.0.0.1", 0), _Handler)
        self.mode = mode
        self.stall_seconds = stall_seconds
        self.drip_interval = drip_interval
        self.closing = threading.Event()
        self.seen: list[tuple[str, str, str]] = []
        self.tokens = itertools.count()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)

    def stall(self, seconds: float) -> bool:
        """Wait up to ``seconds`` (never past the stall bound); False once the server closes."""
        return not self.closing.wait(seconds)


class _Handler(BaseHTTPRequestHandler):
    server: HostileServer
    protocol_version = "HTTP/1.1"
    timeout = 5  # a client that never finishes its request does not hold a thread for long

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- the base's name
        pass  # quiet: pytest shows what matters

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, *, head: bool) -> None:
        self.server.seen.append((self.command, self.path, self.headers.get("Host", "")))
        self.close_connection = True
        mode = self.server.mode
        query = parse_qs(urlsplit(self.path).query)
        if mode == "hang":
            self.server.stall(self.server.stall_seconds)
            return
        if mode == "drip_headers":
            self._drip(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nLast-Modified: " + GOOD_DATE.encode() + b"\r\n\r\n")
            return
        if mode == "always_503":
            self._send(503, {"Content-Length": "0"})
            return
        if mode.startswith("redirect_"):
            self._send(int(mode[-3:]), {"Location": self.server.url + self.path, "Content-Length": "0"})
            return
        if "list-type" in query:
            self._listing(mode, query)
            return
        if mode in HEADER_MODES:
            last_modified, length = HEADER_MODES[mode]
            self._send(200, {"Last-Modified": last_modified, "Content-Length": length}, b"" if head else BODY)
            return
        if mode == "short_body" and not head:
            self._send(200, {"Last-Modified": GOOD_DATE, "Content-Length": str(1 << 40)}, BODY)
            return
        headers = {"Last-Modified": GOOD_DATE, "Content-Length": str(len(BODY)), "ETag": '"e"'}
        if mode == "drip" and not head:
            self._send(200, headers)
            self._drip(BODY)
            return
        self._send(200, headers, b"" if head else BODY)

    def _listing(self, mode: str, query: dict[str, list[str]]) -> None:
        if mode == "not_xml":
            self._send(200, {"Content-Length": "19"}, b"<<< this is not xml")
            return
        token = {"endless_listing": f"t{next(self.server.tokens)}", "repeated_token": "same"}.get(mode)
        count = 5 if mode == "oversized_page" else 1
        prefix = query.get("prefix", [""])[0]
        items = "".join(
            f"<Contents><Key>{prefix}k{next(self.server.tokens)}</Key><LastModified>2025-01-01T00:00:00.000Z"
            f"</LastModified><ETag>\"e\"</ETag><Size>1</Size></Contents>"
            for _ in range(count)
        )
        more = f"<IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>" if token else (
            "<IsTruncated>false</IsTruncated>"
        )
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>bkt</Name><Prefix>{prefix}</Prefix><KeyCount>{count}</KeyCount><MaxKeys>1000</MaxKeys>"
            f"{more}{items}</ListBucketResult>"
        ).encode()
        self._send(200, {"Content-Length": str(len(body)), "Content-Type": "application/xml"}, body)

    def _send(self, status: int, headers: dict[str, str | None], body: bytes = b"") -> None:
        # written by hand: send_header would add Content-Length rules and Date we want to control
        lines = [f"HTTP/1.1 {status} X", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items() if value is not None]
        try:
            self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            self.wfile.flush()
        except OSError:
            pass  # the client gave up; that is its right

    def _drip(self, data: bytes) -> None:
        end = time.monotonic() + self.server.stall_seconds
        for byte in data:
            if time.monotonic() > end or not self.server.stall(self.server.drip_interval):
                return
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:
                return  # the client hung up (its deadline passed): stop dripping

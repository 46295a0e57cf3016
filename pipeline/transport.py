"""Stage-to-stage links over plain TCP: length-prefixed messages, a handshake, deadlines.

Why plain sockets rather than torch.distributed: a pipeline group is a handful of machines on
the open internet, each behind its own NAT or firewall. One TCP connection per boundary, opened
by the upstream stage to the downstream stage's public port, is all the group needs; a
torch.distributed group wants a rendezvous store every rank reaches, a fixed world, and it
takes the whole group down with an opaque error when one rank goes away. Here a lost or silent
partner is a :class:`StageLost` naming the boundary, the peer and the fix, raised within the
deadline, and the caller decides to skip the window.

Each message: 1-byte tag, 4-byte little-endian length, body. The reader checks the tag and the
length against the caller's cap before reading the body (a peer's bytes are hostile).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

_PREFIX = struct.Struct("<BI")
TAG_HELLO, TAG_FRAME, TAG_SCALAR, TAG_BYE = 1, 2, 3, 4
_TAGS = {TAG_HELLO, TAG_FRAME, TAG_SCALAR, TAG_BYE}
MAX_HELLO_BYTES = 4096
HANDSHAKE_SECONDS = 3.0  # how long a connection that is not yet known to be the partner may stay silent
MAX_PENDING_HANDSHAKES = 16  # handshakes in flight at once on a listening port
ACCEPT_POLL_SECONDS = 0.05


class StageLost(ConnectionError):
    """The partner stage disconnected, timed out or spoke out of turn; the window is lost."""


class HandshakeRefused(StageLost):
    """The other end said hello, but not as this stage's partner (malformed, another group or
    window, not adjacent, or refused by the receiver's check)."""


class Hello(BaseModel):
    """The handshake: both ends must be the same run, group and layout, adjacent stages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str = Field(min_length=1, max_length=128)
    group: str = Field(min_length=1, max_length=64)
    stage: int = Field(ge=0)
    n_stages: int = Field(ge=2, le=64)
    window: int = Field(ge=0)
    # in a network, whose data assignment the group trains on (stage 0's uid), passed down the chain
    data_uid: int | None = Field(default=None, ge=0)
    # in a network, who says this: the sender's uid and hotkey, and its hotkey's signature over
    # ``signing_bytes`` (hex); the receiver decides whether to require it (``HelloCheck``)
    uid: int | None = Field(default=None, ge=0)
    hotkey: str = Field(default="", max_length=64)
    signature: str = Field(default="", max_length=256)

    def signing_bytes(self) -> bytes:
        """What the signature covers: every field but the signature, canonical, domain-tagged."""
        body = json.dumps(self.model_dump(mode="json", exclude={"signature"}), sort_keys=True, separators=(",", ":"))
        return _HELLO_DOMAIN + body.encode()


# A receiver's verdict on the partner's (already parsed, adjacent) Hello: None accepts it, a
# string refuses it and says why.
HelloCheck = Callable[[Hello], "str | None"]
_HELLO_DOMAIN = b"tessera-stage-hello-v1\x00"


@dataclass
class Link:
    """One boundary's connection, seen from one end."""

    sock: socket.socket
    peer: str  # "stage 1/2 at 127.0.0.1:5000", for messages
    timeout: float
    hello: Hello | None = None  # what the partner said at the handshake
    # the window's end (time.monotonic()): no message is awaited past it, however promptly the
    # partner answers each one (``pipeline.group.run_window`` sets it)
    deadline: float | None = None

    def _send(self, tag: int, body: bytes) -> None:
        try:
            self.sock.sendall(_PREFIX.pack(tag, len(body)) + body)
        except OSError as exc:
            raise StageLost(f"sending to {self.peer} failed ({exc}); is that stage still running?") from exc

    def _silence(self, deadline: float) -> StageLost:
        """Why nothing arrived by ``deadline``: the window's end, or the partner's silence."""
        if self.deadline is not None and deadline >= self.deadline:
            return StageLost(f"the window's time is up while waiting for {self.peer}; the group skips it")
        return StageLost(f"{self.peer} sent nothing for {self.timeout:.1f} s; it is stalled or gone")

    def _recv_exact(self, n: int, deadline: float) -> bytes:
        chunks, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._silence(deadline)
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(min(n - got, 1 << 20))
            except TimeoutError as exc:
                raise self._silence(deadline) from exc
            except OSError as exc:
                raise StageLost(f"connection to {self.peer} broke ({exc}); restart that stage") from exc
            if not chunk:
                raise StageLost(f"{self.peer} closed the connection; restart that stage to resume the group")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _recv(self, want_tag: int, max_bytes: int) -> bytes:
        deadline = time.monotonic() + self.timeout
        if self.deadline is not None and self.deadline < deadline:
            deadline = self.deadline
            if deadline <= time.monotonic():
                raise self._silence(deadline)
        tag, length = _PREFIX.unpack(self._recv_exact(_PREFIX.size, deadline))
        if tag == TAG_BYE and want_tag != TAG_BYE:
            raise StageLost(f"{self.peer} left the window early (it skipped or failed)")
        if tag not in _TAGS or tag != want_tag:
            raise StageLost(f"{self.peer} sent message tag {tag}, expected {want_tag}")
        if length > max_bytes:
            raise StageLost(f"{self.peer} announced {length} bytes, more than the {max_bytes} this boundary allows")
        return self._recv_exact(length, deadline)

    def send_frame(self, frame: bytes) -> None:
        self._send(TAG_FRAME, frame)

    def recv_frame(self, max_bytes: int) -> bytes:
        return self._recv(TAG_FRAME, max_bytes)

    def send_scalar(self, value: float) -> None:
        self._send(TAG_SCALAR, struct.pack("<d", value))

    def recv_scalar(self) -> float:
        body = self._recv(TAG_SCALAR, 8)
        if len(body) != 8:
            raise StageLost(f"{self.peer} sent a {len(body)}-byte scalar, expected 8")
        (value,) = struct.unpack("<d", body)
        return value

    def bye(self) -> None:
        """Tell the partner this end is leaving the window (best effort: it may be gone already)."""
        try:
            self.sock.sendall(_PREFIX.pack(TAG_BYE, 0))
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


def _handshake(link: Link, mine: Hello, check: HelloCheck | None = None) -> Hello:
    link._send(TAG_HELLO, mine.model_dump_json().encode())
    raw = link._recv(TAG_HELLO, MAX_HELLO_BYTES)
    try:
        theirs = Hello.model_validate(json.loads(raw))
    except (ValidationError, ValueError, RecursionError) as exc:  # RecursionError: deeply nested JSON
        raise HandshakeRefused(f"{link.peer} sent a malformed handshake: {exc}") from exc
    same = (theirs.run_id, theirs.group, theirs.n_stages, theirs.window) == (
        mine.run_id, mine.group, mine.n_stages, mine.window)
    if not same or abs(theirs.stage - mine.stage) != 1:
        raise HandshakeRefused(
            f"{link.peer} is {theirs.model_dump()}, not the adjacent stage of {mine.model_dump()}; "
            "check the group name, the stage numbers S/N and the hparams on both machines"
        )
    problem = check(theirs) if check is not None else None
    if problem is not None:
        raise HandshakeRefused(f"{link.peer} is refused: {problem}")
    link.hello = theirs
    return theirs


def accept_upstream(
    server: socket.socket, mine: Hello, timeout: float, keep_trying: bool = False, check: HelloCheck | None = None
) -> Link:
    """Downstream end: wait (up to ``timeout``) for stage ``mine.stage - 1`` to connect.

    With ``keep_trying`` (a stage in a network, one connection per window, its port open to
    anyone) a connection whose handshake fails is closed and others are still awaited until the
    deadline, and handshakes run side by side (``_accept_concurrently``): a partner's attempt from
    a skipped window left in the backlog, or strangers that connect and say nothing, cannot keep
    the partner waiting behind them."""
    if keep_trying:
        return _accept_concurrently(server, mine, timeout, check)
    server.settimeout(timeout)
    try:
        sock, addr = server.accept()
    except TimeoutError as exc:
        raise StageLost(f"stage {mine.stage - 1}/{mine.n_stages} did not connect within {timeout:.1f} s") from exc
    link = Link(sock, f"stage {mine.stage - 1}/{mine.n_stages} at {addr[0]}:{addr[1]}", timeout)
    _handshake(link, mine, check)
    return link


def _accept_concurrently(server: socket.socket, mine: Hello, timeout: float, check: HelloCheck | None) -> Link:
    """Accept every connection until one completes a valid handshake; each gets its own thread
    and HANDSHAKE_SECONDS, at most MAX_PENDING_HANDSHAKES at once (the oldest is dropped for a
    newer one). The first valid one wins and the others are closed."""
    deadline = time.monotonic() + timeout
    winner: list[Link] = []
    failures: list[StageLost] = []
    pending: list[socket.socket] = []
    lock = threading.Lock()
    decided = threading.Event()

    def shake(sock: socket.socket, addr: tuple) -> None:
        patience = max(0.05, min(HANDSHAKE_SECONDS, deadline - time.monotonic()))
        link = Link(sock, f"stage {mine.stage - 1}/{mine.n_stages} at {addr[0]}:{addr[1]}", patience)
        try:
            _handshake(link, mine, check)
        except StageLost as exc:
            failures.append(exc)
            link.close()
            return
        with lock:
            if decided.is_set():
                link.close()
                return
            winner.append(link)
            decided.set()

    try:
        while not decided.is_set():
            left = deadline - time.monotonic()
            if left <= 0:  # the most telling failure: one that spoke but was refused, else any
                refused = [f for f in failures if isinstance(f, HandshakeRefused)]
                raise (refused or failures or [StageLost(
                    f"stage {mine.stage - 1}/{mine.n_stages} did not connect within {timeout:.1f} s")])[-1]
            server.settimeout(min(left, ACCEPT_POLL_SECONDS))
            try:
                sock, addr = server.accept()
            except TimeoutError:
                continue
            pending.append(sock)
            if len(pending) > MAX_PENDING_HANDSHAKES:
                pending.pop(0).close()  # its handshake thread fails at once
            threading.Thread(target=shake, args=(sock, addr), daemon=True, name="stage-handshake").start()
    finally:
        with lock:
            decided.set()
            kept = winner[0].sock if winner else None
            for sock in pending:
                if sock is not kept:
                    sock.close()
    link = winner[0]
    link.timeout = timeout
    return link


def connect_downstream(host: str, port: int, mine: Hello, timeout: float, check: HelloCheck | None = None) -> Link:
    """Upstream end: connect to stage ``mine.stage + 1``, retrying until ``timeout`` (it may start later)."""
    deadline = time.monotonic() + timeout
    peer = f"stage {mine.stage + 1}/{mine.n_stages} at {host}:{port}"
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
            break
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise StageLost(f"could not reach {peer} within {timeout:.1f} s ({exc})") from exc
            time.sleep(0.1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    link = Link(sock, peer, timeout)
    _handshake(link, mine, check)
    return link

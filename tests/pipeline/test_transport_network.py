"""Stage links in a network (loopback only): a stage's listen backlog can hold a partner's attempt
from a window this stage skipped, or a stray connection; with ``keep_trying`` the downstream end
skips those and takes this window's partner within the deadline. The handshake carries the
group's data uid down the chain."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

from pipeline.transport import TAG_HELLO, Hello, StageLost, accept_upstream, connect_downstream

WINDOW = 3


def _hello(stage: int, n_stages: int = 2, **kw) -> Hello:
    return Hello(**{"run_id": "r", "group": "g", "stage": stage, "n_stages": n_stages, "window": WINDOW, **kw})


def _raw_hello(fields: dict) -> bytes:
    body = json.dumps(fields).encode()
    return struct.pack("<BI", TAG_HELLO, len(body)) + body


def _stale_hello_client(port: int, close: bool = True) -> socket.socket:
    """The partner's attempt of an older window: it connected, said hello and (maybe) gave up."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(_raw_hello(_hello(0, window=WINDOW - 1).model_dump()))
    if close:
        sock.close()
    return sock


def _silent_client(port: int) -> None:
    """A connection that closed without a word (a stage killed right after connecting)."""
    socket.create_connection(("127.0.0.1", port)).close()


def _read_to_eof(sock: socket.socket) -> bytes:
    """Everything the other end sent before it closed (TimeoutError while it keeps it open)."""
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        started = time.monotonic()
        try:
            box["link"] = call()
        except StageLost as exc:
            box["error"] = exc
        box["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


@pytest.fixture
def server():
    with socket.create_server(("127.0.0.1", 0)) as s:
        yield s


def _port(server: socket.socket) -> int:
    return server.getsockname()[1]


@pytest.mark.parametrize("stale", [_stale_hello_client, _silent_client], ids=["older-window-hello", "silent-close"])
def test_keep_trying_takes_the_partner_behind_a_stale_connection(server, stale):
    stale(_port(server))  # sits in the backlog ahead of this window's partner
    thread, box = _in_thread(lambda: accept_upstream(server, _hello(1, data_uid=None), 3.0, keep_trying=True))
    up = connect_downstream("127.0.0.1", _port(server), _hello(0, data_uid=5), timeout=3.0)
    thread.join(timeout=10)
    assert "error" not in box, box.get("error")
    down = box["link"]
    assert box["seconds"] < 2.0  # taken as soon as the partner showed up, not at the deadline
    up.send_frame(b"window 3")
    assert down.recv_frame(max_bytes=8) == b"window 3"
    assert down.hello == _hello(0, data_uid=5)
    up.close()
    down.close()


@pytest.mark.parametrize("stale", [_stale_hello_client, _silent_client], ids=["older-window-hello", "silent-close"])
def test_without_keep_trying_a_stale_connection_fails_at_once(server, stale):
    stale(_port(server))
    started = time.monotonic()
    with pytest.raises(StageLost):
        accept_upstream(server, _hello(1), 3.0)
    assert time.monotonic() - started < 1.0


def test_keep_trying_with_only_bad_connections_raises_the_last_failure_at_the_deadline(server):
    _silent_client(_port(server))
    still_open = _stale_hello_client(_port(server), close=False)  # its refusal is the last failure
    try:
        started = time.monotonic()
        with pytest.raises(StageLost, match="not the adjacent stage") as info:
            accept_upstream(server, _hello(1), 0.5, keep_trying=True)
        seconds = time.monotonic() - started
        still_open.settimeout(1.0)
        assert _read_to_eof(still_open).startswith(struct.pack("<B", TAG_HELLO))  # answered, then hung up on
    finally:
        still_open.close()
    assert "did not connect" not in str(info.value)
    assert 0.45 <= seconds < 1.5  # it waited for a good partner until the deadline, no longer


def test_keep_trying_without_any_connection_says_nobody_connected(server):
    started = time.monotonic()
    with pytest.raises(StageLost, match=r"stage 0/2 did not connect within 0\.3 s"):
        accept_upstream(server, _hello(1), 0.3, keep_trying=True)
    assert time.monotonic() - started < 1.3


def test_the_data_uid_travels_down_the_chain_in_the_handshakes():
    """Stage 0 names its uid; stage 1 learns it from its upstream Hello and passes it on, as
    ``StageMiner.connect`` does; the last stage trains on that uid's data."""
    with socket.create_server(("127.0.0.1", 0)) as s1, socket.create_server(("127.0.0.1", 0)) as s2:
        last, last_box = _in_thread(lambda: accept_upstream(s2, _hello(2, 3), 3.0, keep_trying=True))

        def middle() -> tuple[Hello | None, Hello | None]:
            up = accept_upstream(s1, _hello(1, 3), 3.0, keep_trying=True)
            down = connect_downstream("127.0.0.1", _port(s2), _hello(1, 3, data_uid=up.hello.data_uid), 3.0)
            up.close()
            down.close()
            return up.hello, down.hello

        mid, mid_box = _in_thread(middle)
        first = connect_downstream("127.0.0.1", _port(s1), _hello(0, 3, data_uid=42), 3.0)
        mid.join(timeout=10)
        last.join(timeout=10)
        first.close()
    assert "error" not in mid_box and "error" not in last_box, (mid_box, last_box)
    from_first, from_last = mid_box["link"]
    assert from_first.data_uid == 42
    assert from_last == _hello(2, 3)  # the upstream end holds its partner's Hello too
    assert first.hello == _hello(1, 3, data_uid=None)  # stage 0 connected before stage 1 learned anything
    assert last_box["link"].hello == _hello(1, 3, data_uid=42)
    last_box["link"].close()


def test_a_negative_data_uid_is_a_malformed_handshake(server):
    with pytest.raises(ValueError, match="data_uid"):
        _hello(0, data_uid=-1)
    client = socket.create_connection(("127.0.0.1", _port(server)))
    try:
        client.sendall(_raw_hello({**_hello(0).model_dump(), "data_uid": -1}))
        with pytest.raises(StageLost, match="malformed handshake"):
            accept_upstream(server, _hello(1), 2.0)
    finally:
        client.close()

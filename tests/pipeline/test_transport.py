"""Links between stages: a partner that vanishes, stalls, lies in the handshake or announces a
huge message is a StageLost naming it, within the deadline (loopback only)."""

import socket
import struct
import threading
import time

import pytest

from pipeline.transport import TAG_FRAME, Hello, StageLost, accept_upstream, connect_downstream


def _hello(stage, **kw):
    return Hello(**{"run_id": "r", "group": "g", "stage": stage, "n_stages": 2, "window": 3, **kw})


def _pair(down_hello=None, timeout=2.0):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    box = {}

    def accept():
        try:
            box["down"] = accept_upstream(server, down_hello or _hello(1), timeout=timeout)
        except StageLost as exc:
            box["error"] = exc

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        up = connect_downstream("127.0.0.1", port, _hello(0), timeout=timeout)
    finally:
        thread.join(timeout=10)
        server.close()
    return up, box


def test_frames_and_scalars_cross_a_link():
    up, box = _pair()
    up.send_frame(b"abc")
    up.send_scalar(2.5)
    assert box["down"].recv_frame(max_bytes=3) == b"abc"
    assert box["down"].recv_scalar() == 2.5
    up.close()
    box["down"].close()


def test_a_partner_that_disappears_mid_window_is_reported_at_once():
    up, box = _pair()
    started = time.monotonic()
    up.sock.close()  # the upstream stage process died
    with pytest.raises(StageLost, match="closed the connection; restart that stage"):
        box["down"].recv_frame(max_bytes=100)
    assert time.monotonic() - started < 1.0
    box["down"].close()


def test_a_partner_that_stalls_is_reported_after_the_deadline():
    up, box = _pair(timeout=0.3)
    with pytest.raises(StageLost, match="sent nothing for 0.3 s"):
        box["down"].recv_frame(max_bytes=100)
    up.close()
    box["down"].close()


def test_a_partner_of_another_group_or_window_is_refused_at_the_handshake():
    with pytest.raises(StageLost, match="check the group name"):
        _pair(down_hello=_hello(1, group="other"))
    with pytest.raises(StageLost, match="check the group name"):
        _pair(down_hello=_hello(1, window=4))


def test_an_oversized_or_out_of_turn_message_is_refused_before_reading_it():
    up, box = _pair()
    up.sock.sendall(struct.pack("<BI", TAG_FRAME, 1 << 31))
    with pytest.raises(StageLost, match="more than the 100"):
        box["down"].recv_frame(max_bytes=100)
    up.send_frame(b"x")
    with pytest.raises(StageLost, match="expected 3"):
        box["down"].recv_scalar()
    up.close()
    box["down"].close()


def test_nobody_listening_is_reported_within_the_deadline():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(StageLost, match="could not reach stage 1/2"):
        connect_downstream("127.0.0.1", port, _hello(0), timeout=0.3)


def test_a_short_scalar_is_refused():
    up, box = _pair()
    up._send(3, b"\x01")
    with pytest.raises(StageLost, match="1-byte scalar"):
        box["down"].recv_scalar()
    up.close()
    box["down"].close()

"""Prometheus metrics of one node: where it is, how long each step takes, how its peers fare.

Every series lives in this module's own registry (``REGISTRY``), recorded whether or not anyone
scrapes it: recording is a dictionary update, so the node loops call the one-line functions
below unconditionally. ``serve`` exposes the registry over HTTP; a node calls it only when
``--metrics.port`` is given, bound to ``--metrics.address`` (127.0.0.1 unless the operator says
otherwise: the endpoint has no authentication).

Series (all prefixed ``tessera_``; docs/operations.md lists them with an example scrape):

- ``tessera_node_info{role,uid,run_id}``             1, labels say which node this is
- ``tessera_window``                                  the window the node is working on
- ``tessera_last_successful_window``                  the last window it finished
- ``tessera_loss{kind}``                              train (miner: last inner step),
                                                      heldout (validator: after the outer step)
- ``tessera_payload_bytes_total{direction}``          uploaded (own payloads), downloaded (peers')
- ``tessera_step_seconds{step}``                      histogram: upload, fetch, decode, apply, evaluate
- ``tessera_peers_total{verdict,reason}``             peer payloads judged: accepted, or rejected
                                                      with the protocol's reason word
- ``tessera_weights_set_total{outcome}``              set, failed
- ``tessera_windows_failed_total``                    windows abandoned on a chain/storage error

Label values come from this node only (its role, uid, the protocol's reason enum), never from
a peer's bytes, so a peer cannot grow the number of series.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

DEFAULT_ADDRESS = "127.0.0.1"
STEPS = ("upload", "fetch", "decode", "apply", "evaluate")
# Seconds: from a loopback fetch of a tiny payload to a long evaluation on a large preset.
_STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

REGISTRY = CollectorRegistry()
NODE_INFO = Gauge("tessera_node_info", "Which node this is (value 1)", ["role", "uid", "run_id"], registry=REGISTRY)
WINDOW = Gauge("tessera_window", "Window the node is working on", registry=REGISTRY)
LAST_SUCCESSFUL_WINDOW = Gauge(
    "tessera_last_successful_window", "Last window the node finished (-1: none yet)", registry=REGISTRY
)
LAST_SUCCESSFUL_WINDOW.set(-1)
LOSS = Gauge("tessera_loss", "Latest loss: train (miner) or heldout (validator)", ["kind"], registry=REGISTRY)
PAYLOAD_BYTES = Counter(
    "tessera_payload_bytes", "Payload bytes uploaded (own) or downloaded (peers')", ["direction"], registry=REGISTRY
)
STEP_SECONDS = Histogram(
    "tessera_step_seconds", "Seconds per step of a window", ["step"], buckets=_STEP_BUCKETS, registry=REGISTRY
)
PEERS = Counter("tessera_peers", "Peer payloads judged, by verdict and reason", ["verdict", "reason"], registry=REGISTRY)
WEIGHTS_SET = Counter("tessera_weights_set", "set_weights calls by outcome", ["outcome"], registry=REGISTRY)
WINDOWS_FAILED = Counter(
    "tessera_windows_failed", "Windows abandoned after a chain or storage error", registry=REGISTRY
)


class MetricsError(RuntimeError):
    """The metrics endpoint could not be started; the message names the flag to change."""


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(port: int, address: str = DEFAULT_ADDRESS) -> MetricsServer:
    """Expose ``REGISTRY`` at ``http://address:port/metrics`` on a daemon thread (port 0: any free)."""
    try:
        server, thread = start_http_server(port, addr=address, registry=REGISTRY)
    except OSError as exc:  # port taken, address not on this host, permission
        raise MetricsError(
            f"cannot serve metrics on {address}:{port}: {exc.strerror or exc} "
            "(choose another --metrics.port or --metrics.address)"
        ) from None
    return MetricsServer(server, thread)


def node_info(role: str, uid: int, run_id: str) -> None:
    NODE_INFO.labels(role=role, uid=str(uid), run_id=run_id).set(1)


def window(w: int) -> None:
    WINDOW.set(w)


def window_done(w: int) -> None:
    LAST_SUCCESSFUL_WINDOW.set(w)


def window_failed() -> None:
    WINDOWS_FAILED.inc()


def loss(kind: str, value: float | None) -> None:
    """Record a loss; None (nothing measured this window) leaves the last value."""
    if value is not None and math.isfinite(value):
        LOSS.labels(kind=kind).set(value)


def payload_bytes(direction: str, count: int) -> None:
    if count > 0:
        PAYLOAD_BYTES.labels(direction=direction).inc(count)


def observe(step: str, seconds: float) -> None:
    STEP_SECONDS.labels(step=step).observe(max(0.0, seconds))


@contextmanager
def timed(step: str) -> Iterator[None]:
    """Observe how long the ``with`` body took as ``step`` (also when it raises)."""
    started = time.monotonic()
    try:
        yield
    finally:
        observe(step, time.monotonic() - started)


def peers(verdicts: Iterable[tuple[bool, str]]) -> None:
    """Count judged peer payloads: (accepted, reason word); the reason is ignored when accepted."""
    for accepted, reason in verdicts:
        if accepted:
            PEERS.labels(verdict="accepted", reason="").inc()
        else:
            PEERS.labels(verdict="rejected", reason=reason).inc()


def weights_set(ok: bool) -> None:
    WEIGHTS_SET.labels(outcome="set" if ok else "failed").inc()

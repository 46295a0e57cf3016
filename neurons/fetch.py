"""Fetch peers' payloads for one window and judge each with the protocol's acceptance rules.

The I/O lives here (HEAD, then a capped GET); every decision about the bytes is
``protocol.acceptance``'s, so miners and validators agree on which payloads count. Each peer's
fetch has one total deadline (HEAD + GET + retries, enforced by the store), all peers are fetched
concurrently, and a peer that drips, hangs or answers garbage costs only its own slot: it becomes
MISSING (excused: the network, not provably the miner) or a typed rejection.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from compression import DecodedPayload
from neurons import metrics
from neurons.peers import Peer, PeerDirectory
from protocol.acceptance import (
    AcceptanceRule,
    RejectReason,
    Stage1Result,
    check_size,
    check_slot,
    contained,
    judge_payload,
)
from protocol.keys import payload_key
from storage import AccessDenied, ObjectNotFound, StorageError

# Fetch threads per window; enough that a few hanging peers never hold up the rest (each thread
# is bounded by the deadline), few enough to keep sockets and memory modest for 256 miners.
MAX_FETCH_WORKERS = 32


@dataclass
class FetchedPayload:
    uid: int
    result: Stage1Result
    size: int = 0  # what HEAD claimed (a hostile server may claim anything)
    last_modified: float | None = None
    decoded: DecodedPayload | None = None
    downloaded: int = 0  # bytes actually received

    @property
    def ok(self) -> bool:
        return self.result.passed and self.decoded is not None


def _reject(uid: int, reason: RejectReason, detail: str, **kw) -> FetchedPayload:
    return FetchedPayload(uid, Stage1Result.reject(uid, reason, detail), **kw)


def fetch_payload(
    peer: Peer, rule: AcceptanceRule, shapes: Mapping[str, tuple[int, ...]], deadline: float | None = None
) -> FetchedPayload:
    """HEAD, check slot and size, GET under the cap, judge the bytes; never raises.

    ``deadline`` is a ``time.monotonic()`` instant bounding the whole fetch."""
    got = contained(peer.uid, "payload fetch", lambda: _fetch(peer, rule, shapes, deadline))
    return FetchedPayload(peer.uid, got) if isinstance(got, Stage1Result) else got


def _fetch(peer: Peer, rule: AcceptanceRule, shapes, deadline: float | None) -> FetchedPayload:
    uid, key = peer.uid, payload_key(rule.run_id, rule.window, peer.uid)
    try:
        info = peer.store.head(key, deadline=deadline)
    except ObjectNotFound:
        return _reject(uid, RejectReason.MISSING, "no payload")
    except AccessDenied as exc:  # the operator's read key: say so, the miner's log shows this line
        return _reject(uid, RejectReason.MISSING, f"access denied: the committed read key cannot read the bucket ({exc})")
    except StorageError as exc:
        return _reject(uid, RejectReason.MISSING, f"bucket unreachable: {exc}")
    seen = {"size": info.size, "last_modified": info.last_modified.timestamp()}
    problem = check_slot(seen["last_modified"], rule.slot_start, rule.slot_seconds) or check_size(
        info.size, rule.max_bytes
    )
    if problem is not None:
        return _reject(uid, problem.reason, problem.detail, **seen)
    try:
        with metrics.timed("fetch"):
            data = peer.store.get(key, max_bytes=rule.max_bytes, deadline=deadline)
    except StorageError as exc:
        return _reject(uid, RejectReason.MISSING, f"download failed: {exc}", **seen)
    metrics.payload_bytes("downloaded", len(data))
    with metrics.timed("decode"):
        verdict = judge_payload(data, uid, peer.hotkey, rule, shapes)
    return FetchedPayload(uid, verdict.result, decoded=verdict.decoded, downloaded=len(data), **seen)


def _fetch_when_open(
    peers: PeerDirectory, uid: int, rule: AcceptanceRule, shapes: Mapping[str, tuple[int, ...]], deadline: float | None
) -> FetchedPayload:
    peer = peers.await_peer(uid, deadline)
    if peer is None:
        return _reject(uid, RejectReason.MISSING, "its bucket's client could not be built by the deadline")
    return fetch_payload(peer, rule, shapes, deadline)


def fetch_many(
    peers: PeerDirectory,
    uids: list[int],
    rule: AcceptanceRule,
    shapes: Mapping[str, tuple[int, ...]],
    budget_seconds: float | None = None,
) -> dict[int, FetchedPayload]:
    """Fetch several peers concurrently, each within ``budget_seconds`` from now; a uid without
    a bucket is MISSING. Returns once every fetch has finished or hit the shared deadline."""
    deadline = time.monotonic() + budget_seconds if budget_seconds is not None else None
    out: dict[int, FetchedPayload] = {}
    jobs = {}
    with ThreadPoolExecutor(max_workers=max(1, min(MAX_FETCH_WORKERS, len(uids)))) as pool:
        for uid in uids:
            peer = peers.get(uid)
            if peer is not None:
                jobs[uid] = pool.submit(fetch_payload, peer, rule, shapes, deadline)
            elif peers.is_opening(uid):  # its client is still being built: that counts against its budget
                jobs[uid] = pool.submit(_fetch_when_open, peers, uid, rule, shapes, deadline)
            else:
                out[uid] = _reject(uid, RejectReason.MISSING, "no bucket commitment")
        for uid, job in jobs.items():
            out[uid] = job.result()
    return out

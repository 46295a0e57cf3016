"""Fetch one peer's payload for one window and check everything any node can check alone.

Miners and validators run exactly these checks before aggregating, so honest nodes agree on
which payloads count: present, uploaded inside the slot (storage LastModified), under the size
cap (HEAD before GET), decodes to exactly the local shapes, signed by the uid's hotkey, and the
manifest names this run, window, uid and hotkey. Validators add sync and copy checks on top.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from compression import CodecParams, DecodedPayload, PayloadError, SignatureError, decode_payload
from neurons.peers import Peer, PeerDirectory
from protocol.keys import payload_key
from protocol.signing import verify_signature
from scoring.filters import RejectReason, Stage1Result, check_size, check_slot
from storage import ObjectNotFound, StorageError


@dataclass(frozen=True)
class SlotRule:
    run_id: str
    window: int
    slot_start: float
    slot_seconds: float
    max_bytes: int
    # The network's codec (hparams); None accepts any. A payload coded otherwise (e.g. denser
    # top-k) would carry more coordinates, and more weight in the aggregate, than its peers'.
    codec: CodecParams | None = None


@dataclass
class FetchedPayload:
    uid: int
    result: Stage1Result
    size: int = 0
    last_modified: float | None = None
    decoded: DecodedPayload | None = None

    @property
    def ok(self) -> bool:
        return self.result.passed and self.decoded is not None


def _reject(uid: int, reason: RejectReason, detail: str, **kw) -> FetchedPayload:
    return FetchedPayload(uid, Stage1Result.reject(uid, reason, detail), **kw)


def fetch_payload(peer: Peer, rule: SlotRule, shapes: Mapping[str, tuple[int, ...]]) -> FetchedPayload:
    uid, key = peer.uid, payload_key(rule.run_id, rule.window, peer.uid)
    try:
        info = peer.store.head(key)
    except ObjectNotFound:
        return _reject(uid, RejectReason.MISSING, "no payload")
    except StorageError as exc:
        return _reject(uid, RejectReason.MISSING, f"bucket unreachable: {exc}")
    seen = {"size": info.size, "last_modified": info.last_modified.timestamp()}
    problem = check_slot(seen["last_modified"], rule.slot_start, rule.slot_seconds) or check_size(
        info.size, rule.max_bytes
    )
    if problem is not None:
        return _reject(uid, problem.reason, problem.detail, **seen)
    try:
        data = peer.store.get(key, max_bytes=rule.max_bytes)
    except StorageError as exc:
        return _reject(uid, RejectReason.MISSING, f"download failed: {exc}", **seen)
    try:
        decoded = decode_payload(
            data, shapes, rule.max_bytes, verify=lambda msg, sig: verify_signature(peer.hotkey, msg, sig),
            codec=rule.codec,
        )
    except PayloadError as exc:
        reason = RejectReason.BAD_SIGNATURE if isinstance(exc, SignatureError) else RejectReason.UNDECODABLE
        return _reject(uid, reason, exc.reason, **seen)
    m = decoded.manifest
    if (m.run_id, m.window, m.uid, m.hotkey) != (rule.run_id, rule.window, uid, peer.hotkey):
        detail = f"manifest says run {m.run_id} window {m.window} uid {m.uid}"
        return _reject(uid, RejectReason.WRONG_WINDOW, detail, **seen)
    return FetchedPayload(uid, Stage1Result.accept(uid), decoded=decoded, **seen)


def fetch_many(
    peers: PeerDirectory, uids: list[int], rule: SlotRule, shapes: Mapping[str, tuple[int, ...]], workers: int = 8
) -> dict[int, FetchedPayload]:
    """Fetch several peers concurrently (bounded); a uid without a bucket is MISSING."""
    out: dict[int, FetchedPayload] = {}
    jobs = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for uid in uids:
            peer = peers.get(uid)
            if peer is None:
                out[uid] = _reject(uid, RejectReason.MISSING, "no bucket commitment")
            else:
                jobs[uid] = pool.submit(fetch_payload, peer, rule, shapes)
        for uid, job in jobs.items():
            out[uid] = job.result()
    return out

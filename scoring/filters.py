"""Stage 1 of Gauntlet: cheap verdicts on each miner's payload before any loss is measured.

The validator loop does the I/O (HEAD, download, decode, signature check) and records what it
found as a ``Stage1Result``. The pure checks here cover what can be decided from numbers alone:
the upload slot, the size cap, and whether a decoded update fits the local model exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import torch

from compression.sparse import SparseUpdate


class RejectReason(StrEnum):
    MISSING = "missing"  # no payload for the window (or not fetchable by the deadline)
    LATE = "late"  # LastModified after the upload slot
    EARLY = "early"  # LastModified before the window ended: it could not contain the window's work
    OVERSIZED = "oversized"  # HEAD size above the cap
    UNDECODABLE = "undecodable"  # not a valid safetensors/manifest/codec message
    BAD_SIGNATURE = "bad_signature"  # not signed by the hotkey registered on this uid
    WRONG_WINDOW = "wrong_window"  # manifest names another window, run or uid
    WRONG_SHAPE = "wrong_shape"  # parameter names/shapes/indices do not fit the local model
    NON_FINITE = "non_finite"  # NaN or inf values
    OUT_OF_SYNC = "out_of_sync"  # the miner's model fingerprint disagrees with ours
    COPY = "copy"  # near-duplicate of another upload (same window, earlier, or remembered)


# Reasons a correct node can hit through no fault of its own (network trouble, a reload after
# falling behind). They only stop payment through staleness; every other reason is evidence
# against the miner and counts as a failed window (see ``scoring.gauntlet``).
EXCUSED_REASONS: frozenset[RejectReason] = frozenset(
    {RejectReason.MISSING, RejectReason.LATE, RejectReason.OUT_OF_SYNC}
)


class Verdict(StrEnum):
    PASSED = "passed"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Stage1Result:
    """One miner's stage-1 outcome for one window."""

    uid: int
    passed: bool
    reason: RejectReason | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if self.passed != (self.reason is None):
            raise ValueError(f"uid {self.uid}: a passed result has no reason, a rejected one needs one")

    @classmethod
    def accept(cls, uid: int) -> Stage1Result:
        return cls(uid=uid, passed=True)

    @classmethod
    def reject(cls, uid: int, reason: RejectReason, detail: str = "") -> Stage1Result:
        return cls(uid=uid, passed=False, reason=reason, detail=detail)

    @property
    def verdict(self) -> Verdict:
        return Verdict.PASSED if self.passed else Verdict.REJECTED

    @property
    def is_fault(self) -> bool:
        """Rejected for a reason that counts against the miner."""
        return not self.passed and self.reason not in EXCUSED_REASONS


@dataclass(frozen=True)
class Rejection:
    """A failed check: why, and a human-readable detail for logs."""

    reason: RejectReason
    detail: str


def check_slot(last_modified: float, slot_start: float, slot_seconds: float) -> Rejection | None:
    """The upload counts only if storage's LastModified lies in ``[slot_start, slot_start + slot]``."""
    if last_modified < slot_start:
        return Rejection(RejectReason.EARLY, f"uploaded {slot_start - last_modified:.1f}s before the slot")
    if last_modified > slot_start + slot_seconds:
        late = last_modified - slot_start - slot_seconds
        return Rejection(RejectReason.LATE, f"uploaded {late:.1f}s after the slot closed")
    return None


def check_size(nbytes: int, max_bytes: int) -> Rejection | None:
    """Readers HEAD first and refuse anything over the cap before downloading it."""
    if nbytes > max_bytes:
        return Rejection(RejectReason.OVERSIZED, f"{nbytes} bytes > cap {max_bytes}")
    return None


def check_update(update: SparseUpdate, shapes: Mapping[str, tuple[int, ...]]) -> Rejection | None:
    """A decoded update must name only local parameters, with their exact shapes, and carry
    sorted unique in-range int64 indices with finite float values of matching length."""
    unknown = sorted(set(update) - set(shapes))
    if unknown:
        return Rejection(RejectReason.WRONG_SHAPE, f"unknown parameters {unknown[:3]}")
    for name, st in update.items():
        problem = _tensor_problem(st.shape, st.indices, st.values, tuple(shapes[name]))
        if problem is not None:
            return Rejection(problem[0], f"{name}: {problem[1]}")
    return None


def _tensor_problem(
    shape: tuple[int, ...], indices: torch.Tensor, values: torch.Tensor, expected: tuple[int, ...]
) -> tuple[RejectReason, str] | None:
    if tuple(shape) != expected:
        return RejectReason.WRONG_SHAPE, f"shape {tuple(shape)} != local {expected}"
    if indices.dtype != torch.int64 or indices.dim() != 1:
        return RejectReason.WRONG_SHAPE, "indices must be a 1-D int64 tensor"
    if values.dim() != 1 or values.numel() != indices.numel() or not values.is_floating_point():
        return RejectReason.WRONG_SHAPE, "values must be 1-D floats, one per index"
    if indices.numel() == 0:
        return None
    numel = math.prod(expected)
    if int(indices.min()) < 0 or int(indices.max()) >= numel:
        return RejectReason.WRONG_SHAPE, f"index out of range [0, {numel})"
    if indices.numel() > 1 and not bool((indices[1:] > indices[:-1]).all()):
        return RejectReason.WRONG_SHAPE, "indices not sorted and unique"
    if not bool(torch.isfinite(values).all()):
        return RejectReason.NON_FINITE, "non-finite values"
    return None

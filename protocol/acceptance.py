"""What every node decides alone about a peer's payload, and the one verdict type for it.

Miners, validators and joining nodes replaying a window all call ``judge_payload`` on the bytes
they fetched, so honest nodes agree on which payloads count. In order, cheapest first:

1. slot: the storage server's LastModified lies in the upload slot (``check_slot``);
2. size: HEAD size under the cap, before anything is downloaded (``check_size``);
3. decode + signature + codec: the wire format parses, is signed by the uid's hotkey and uses the
   network's codec, and decodes to exactly the local model's shapes (``compression.wire``), or,
   for a pipeline stage's payload, to exactly the shapes of the layer range it claims
   (``stage_part``);
4. identity: the manifest names this run, window, uid and hotkey;
5. bounds: every value and every parameter's update norm is inside the network's bounds
   (``check_bounds``), a rule that holds however few honest peers are in the gather set.

Validators add what needs more than one payload or their own state (sync, copies) on top, in
``scoring``. A verdict is a ``Stage1Result``: accepted, or rejected with a ``RejectReason`` and
a detail that names the problem.

Containment: ``judge_payload`` never raises. The codec raises ``PayloadError`` for every
malformed input it knows about; anything else escaping from one peer's bytes is a bug in a
reader, and ``contained`` turns it into that peer's rejection (naming the exception, logged with
its traceback so the bug stays visible) instead of ending the node.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import torch

from compression import (
    CodecParams,
    DecodedPayload,
    PayloadError,
    PayloadManifest,
    SignatureError,
    SparseUpdate,
    decode_payload,
)
from compression.wire import StagePart
from protocol.layers import owned_shapes, split_layers
from protocol.signing import verify_signature

log = logging.getLogger(__name__)

T = TypeVar("T")

# S3 servers report LastModified in whole seconds: a stamp t means the upload finished somewhere
# in [t, t + 1). An upload is on time when that interval meets the slot; the benefit of the doubt
# is at most one second at the slot's start and nothing at its end.
LAST_MODIFIED_RESOLUTION_S = 1.0


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
    OUT_OF_BOUNDS = "out_of_bounds"  # finite values or norms beyond the network's bounds
    OUT_OF_SYNC = "out_of_sync"  # the miner's model fingerprint disagrees with ours
    COPY = "copy"  # near-duplicate of another upload (same window, earlier, or remembered)
    UNGROUPED = "ungrouped"  # a pipeline stage whose group's stage 0 uploaded nothing this window


# Reasons a correct node can hit through no fault of its own (network trouble, a reload after
# falling behind, a pipeline partner whose upload failed). They only stop payment through staleness; every other reason is evidence
# against the miner and counts as a failed window (see ``scoring.gauntlet``).
EXCUSED_REASONS: frozenset[RejectReason] = frozenset(
    {RejectReason.MISSING, RejectReason.LATE, RejectReason.OUT_OF_SYNC, RejectReason.UNGROUPED}
)


class Verdict(StrEnum):
    PASSED = "passed"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Stage1Result:
    """One miner's verdict for one window."""

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


@dataclass(frozen=True)
class ValueBounds:
    """The network's bounds on a payload's numbers (``protocol.hparams.BoundsConfig``)."""

    max_abs_value: float
    max_update_ratio: float

    @classmethod
    def from_hparams(cls, hparams) -> ValueBounds:
        return cls(max_abs_value=hparams.max_abs_value, max_update_ratio=hparams.bounds.max_update_ratio)


@dataclass(frozen=True)
class AcceptanceRule:
    """Everything a node needs to judge one window's payloads alone."""

    run_id: str
    window: int
    slot_start: float
    slot_seconds: float
    max_bytes: int
    # The network's codec (hparams); None accepts any. A payload coded otherwise (e.g. denser
    # top-k) would carry more coordinates, and more weight in the aggregate, than its peers'.
    codec: CodecParams | None = None
    bounds: ValueBounds | None = None
    # ||θ_p|| of the local model θ_w, per parameter, for the update-norm bound
    param_norms: Mapping[str, float] | None = None
    # the model's decoder layers, to judge a pipeline stage's partial payload; None refuses those
    num_layers: int | None = None


def parameter_norms(model: torch.nn.Module) -> dict[str, float]:
    """||θ_p|| per parameter (float64), the reference the update-norm bound scales with."""
    with torch.no_grad():
        return {n: float(p.detach().double().norm()) for n, p in model.named_parameters()}


def check_slot(last_modified: float, slot_start: float, slot_seconds: float) -> Rejection | None:
    """On time when ``[last_modified, last_modified + resolution)`` meets the slot (see above)."""
    if not math.isfinite(last_modified):
        return Rejection(RejectReason.UNDECODABLE, "storage reported no usable LastModified")
    if last_modified + LAST_MODIFIED_RESOLUTION_S <= slot_start:
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


def check_bounds(update: SparseUpdate, bounds: ValueBounds, param_norms: Mapping[str, float] | None) -> Rejection | None:
    """Every value finite and |value| <= max_abs_value; per parameter
    ||update_p|| <= max_update_ratio x ||θ_p|| + max_abs_value (the floor lets a tiny parameter move)."""
    for name in sorted(update):
        values = update[name].values
        if values.numel() == 0:
            continue
        if not bool(torch.isfinite(values).all()):
            return Rejection(RejectReason.NON_FINITE, f"{name}: non-finite values")
        peak = float(values.abs().max())
        if peak > bounds.max_abs_value:
            return Rejection(RejectReason.OUT_OF_BOUNDS, f"{name}: |value| {peak:.3g} > bound {bounds.max_abs_value:.3g}")
        if param_norms is None or name not in param_norms:
            continue
        norm = float(values.double().norm())
        limit = bounds.max_update_ratio * param_norms[name] + bounds.max_abs_value
        if norm > limit:
            return Rejection(RejectReason.OUT_OF_BOUNDS, f"{name}: update norm {norm:.3g} > bound {limit:.3g}")
    return None


@dataclass(frozen=True)
class PayloadVerdict:
    """The outcome of judging one payload's bytes: the verdict, and the update when accepted."""

    result: Stage1Result
    decoded: DecodedPayload | None = None


def judge_payload(
    data: bytes, uid: int, hotkey: str, rule: AcceptanceRule, shapes: Mapping[str, tuple[int, ...]]
) -> PayloadVerdict:
    """Decode, authenticate and bound one peer's payload bytes; never raises."""
    verdict = contained(uid, "payload", lambda: _judge(data, uid, hotkey, rule, shapes))
    if isinstance(verdict, Stage1Result):
        return PayloadVerdict(verdict)
    return verdict


def _judge(
    data: bytes, uid: int, hotkey: str, rule: AcceptanceRule, shapes: Mapping[str, tuple[int, ...]]
) -> PayloadVerdict:
    def reject(reason: RejectReason, detail: str) -> PayloadVerdict:
        return PayloadVerdict(Stage1Result.reject(uid, reason, detail))

    part = stage_part(rule.num_layers) if rule.num_layers is not None else None
    try:
        decoded = decode_payload(
            data, shapes, rule.max_bytes, verify=lambda msg, sig: verify_signature(hotkey, msg, sig), codec=rule.codec,
            stage_part=part,
        )
    except SignatureError as exc:
        return reject(RejectReason.BAD_SIGNATURE, exc.reason)
    except PayloadError as exc:
        return reject(RejectReason.UNDECODABLE, exc.reason)
    m = decoded.manifest
    if (m.run_id, m.window, m.uid, m.hotkey) != (rule.run_id, rule.window, uid, hotkey):
        return reject(RejectReason.WRONG_WINDOW, f"manifest says run {m.run_id} window {m.window} uid {m.uid}")
    if rule.bounds is not None:
        problem = check_bounds(decoded.update, rule.bounds, rule.param_norms)
        if problem is not None:
            return reject(problem.reason, problem.detail)
    return PayloadVerdict(Stage1Result.accept(uid), decoded)


def stage_part(num_layers: int) -> StagePart:
    """How a reader cuts the model for a pipeline stage's payload (``compression.StageClaim``):
    the claimed range must be the canonical split for (index, n_stages), stage 0 must train on its
    own uid's data, and the payload then holds exactly that range's parameters."""

    def part(manifest: PayloadManifest, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        claim = manifest.pipeline_stage
        if claim is None:
            return dict(shapes)
        if not claim.index < claim.n_stages <= num_layers:
            raise PayloadError(f"pipeline stage {claim.index}/{claim.n_stages} does not exist for {num_layers} layers")
        span = split_layers(num_layers, claim.n_stages)[claim.index]
        if (claim.layer_start, claim.layer_stop) != (span.start, span.stop):
            raise PayloadError(
                f"pipeline stage {claim.index}/{claim.n_stages} holds layers [{span.start}:{span.stop}], "
                f"the payload claims [{claim.layer_start}:{claim.layer_stop}]"
            )
        if claim.index == 0 and claim.data_uid != manifest.uid:
            raise PayloadError(f"stage 0 trains on its own uid's data, the payload names uid {claim.data_uid}")
        return owned_shapes(shapes, span)

    return part


def contained(uid: int, what: str, judge: Callable[[], T]) -> T | Stage1Result:
    """Run ``judge`` on one peer's object; any exception it lets escape becomes that peer's
    rejection instead of a node exit.

    This is the boundary guard (DESIGN.md "Everything a peer sends is hostile"): readers raise
    typed errors for every input they know to be bad, so an exception reaching here is a reader
    bug. It is logged with its traceback and named in the rejection's detail, so it stays visible
    and gets fixed, but it costs only the peer whose bytes triggered it.
    """
    try:
        return judge()
    except Exception as exc:  # noqa: BLE001 - the one boundary guard, see the docstring
        log.exception("uid %d: reading its %s raised %s; rejected", uid, what, type(exc).__name__)
        return Stage1Result.reject(uid, RejectReason.UNDECODABLE, f"unexpected {type(exc).__name__} reading {what}: {exc}"[:300])

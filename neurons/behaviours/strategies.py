"""One small strategy object per behaviour; the honest miner is the base class.

The miner asks its behaviour, in window order: ``trains(w)`` (run the inner steps at all?),
``assignment(uid, w)`` (whose data), ``upload_times(slot)`` (when to build and put the payload),
``payload(ctx)`` (what to publish), ``applies_outer_step`` (follow θ?) and, after the gather,
``observe(gathered)``. Every kind overrides only the decisions it changes, so the rest of its
window is the honest code path itself.
"""

from __future__ import annotations

import logging
import math

from compression import CompressedMessage, aggregate
from neurons.behaviours.context import WindowContext
from neurons.behaviours.kinds import BYTE_LEVEL_KINDS, HONEST
from neurons.behaviours.messages import (
    Dense,
    dense_of,
    encode_dense,
    mean_dense,
    negated,
    noise_like,
    scale_values,
    with_noise,
    zeros_message,
)
from neurons.gather import WindowGather

log = logging.getLogger(__name__)

# ``scaled``: x3 keeps a tiny-preset update inside the value bounds (honest per-parameter norms
# reach 0.28 of θ's against a bound of 1.0; values 0.09 against 0.64: scripts/calibrate_bounds.py),
# so acceptance cannot refuse it and only clipping and scoring stand in its way.
SCALE_FACTOR = 3.0
# ``noised_copy``: noise of this fraction of the copied values' RMS leaves its top-k set in place.
COPY_NOISE = 0.1
# ``copy``: honest miners put at the first whole second of the slot; read them a second later.
COPY_DELAY_SECONDS = 1.05
# ``late_mean_copy``: start this long before the slot ends (read, average, encode, put).
LATE_MEAN_LEAD_SECONDS = 1.5
# ``wrong_data``: train on this much later a window's assignment of its own uid (data no miner
# is assigned now, so nothing it learns is "its own" for the unique-data test).
WRONG_DATA_SHIFT = 7919


class Behaviour:
    """The honest miner: trains on its assignment, publishes its message in the slot, follows θ."""

    kind = HONEST
    applies_outer_step = True

    def trains(self, window: int) -> bool:
        return True

    def assignment(self, uid: int, window: int) -> tuple[int, int]:
        """(uid, window) whose assigned data the miner trains on."""
        return uid, window

    def upload_times(self, slot_start: float, slot_end: float) -> tuple[float, float]:
        """When to build and put the payload, and when to give up on the put.

        Storage LastModified has whole-second resolution: start at the first whole second inside
        the slot, so a truncated timestamp can never fall before the slot opens."""
        return math.ceil(slot_start) + 0.05, slot_end

    def payload(self, ctx: WindowContext) -> bytes | None:
        return ctx.sign(ctx.honest) if ctx.honest is not None else None

    def observe(self, gathered: WindowGather, shapes: dict[str, tuple[int, ...]]) -> None:
        """Called after every live gather, before θ moves on."""


class _Transform(Behaviour):
    """Trains honestly, then publishes a transformation of its own message."""

    def payload(self, ctx: WindowContext) -> bytes | None:
        return ctx.sign(self.transform(ctx.honest, ctx)) if ctx.honest is not None else None

    def transform(self, honest: CompressedMessage, ctx: WindowContext) -> CompressedMessage:
        raise NotImplementedError


class Noise(_Transform):
    kind = "noise"

    def transform(self, honest: CompressedMessage, ctx: WindowContext) -> CompressedMessage:
        return noise_like(honest, seed=ctx.window * 65536 + ctx.uid)


class Scaled(_Transform):
    kind = "scaled"

    def transform(self, honest: CompressedMessage, ctx: WindowContext) -> CompressedMessage:
        return scale_values(honest, SCALE_FACTOR)


class SignFlip(_Transform):
    kind = "sign_flip"

    def transform(self, honest: CompressedMessage, ctx: WindowContext) -> CompressedMessage:
        return negated(honest)


class _FreeRider(Behaviour):
    """Never trains: its payload comes from what it can read or already holds."""

    def trains(self, window: int) -> bool:
        return False

    def payload(self, ctx: WindowContext) -> bytes | None:
        dense = self.update(ctx)
        return ctx.sign(encode_dense(dense, ctx.codec)) if dense is not None else None

    def update(self, ctx: WindowContext) -> Dense | None:
        raise NotImplementedError


class Zeros(_FreeRider):
    kind = "zeros"

    def payload(self, ctx: WindowContext) -> bytes | None:
        return ctx.sign(zeros_message(ctx.shapes, ctx.codec))


class Copy(_FreeRider):
    """Takes the lowest uid's accepted upload of this window (honest miners register first)."""

    kind = "copy"

    def upload_times(self, slot_start: float, slot_end: float) -> tuple[float, float]:
        return math.ceil(slot_start) + COPY_DELAY_SECONDS, slot_end

    def update(self, ctx: WindowContext) -> Dense | None:
        uploads = ctx.peer_updates()
        if not uploads:
            return None
        victim = min(uploads)
        log.info("%s uid %d window %d copies uid %d", self.kind, ctx.uid, ctx.window, victim)
        return dense_of(uploads[victim])


class NoisedCopy(Copy):
    kind = "noised_copy"

    def update(self, ctx: WindowContext) -> Dense | None:
        copied = super().update(ctx)
        return with_noise(copied, COPY_NOISE, seed=ctx.window) if copied is not None else None


class LateMeanCopy(_FreeRider):
    kind = "late_mean_copy"

    def upload_times(self, slot_start: float, slot_end: float) -> tuple[float, float]:
        return slot_end - LATE_MEAN_LEAD_SECONDS, slot_end

    def update(self, ctx: WindowContext) -> Dense | None:
        uploads = ctx.peer_updates()
        return mean_dense(list(uploads.values()), ctx.shapes) if uploads else None


class PrevAggregate(_FreeRider):
    """Republishes the aggregate every node applied after the previous window."""

    kind = "prev_aggregate"

    def __init__(self) -> None:
        self.last: Dense | None = None

    def observe(self, gathered: WindowGather, shapes: dict[str, tuple[int, ...]]) -> None:
        self.last = aggregate(gathered.updates, shapes) if gathered.accepted else None

    def update(self, ctx: WindowContext) -> Dense | None:
        return self.last


class Stale(Behaviour):
    """Trains once, then republishes that first message, re-signed for every later window."""

    kind = "stale"

    def __init__(self) -> None:
        self.kept: CompressedMessage | None = None

    def trains(self, window: int) -> bool:
        return self.kept is None

    def payload(self, ctx: WindowContext) -> bytes | None:
        if self.kept is None:
            self.kept = ctx.honest
        return ctx.sign(self.kept) if self.kept is not None else None


class WrongData(Behaviour):
    kind = "wrong_data"

    def assignment(self, uid: int, window: int) -> tuple[int, int]:
        return uid, window + WRONG_DATA_SHIFT


class Late(Behaviour):
    """Honest work, put one whole second after the slot closed (its LastModified says so)."""

    kind = "late"

    def upload_times(self, slot_start: float, slot_end: float) -> tuple[float, float]:
        start = math.floor(slot_end) + 1.05
        return start, start + (slot_end - slot_start)


class Desync(Behaviour):
    kind = "desync"
    applies_outer_step = False


STRATEGIES: dict[str, type[Behaviour]] = {
    cls.kind: cls
    for cls in (Behaviour, Zeros, Noise, Scaled, SignFlip, Copy, NoisedCopy, Stale, PrevAggregate,
                LateMeanCopy, WrongData, Late, Desync)
}


def make_behaviour(kind: str) -> Behaviour:
    """The strategy for ``kind``; the byte-level kinds run as their own process instead."""
    if kind in BYTE_LEVEL_KINDS:
        raise ValueError(f"{kind} is served by neurons.localnet.adversary, not by the miner's window")
    try:
        return STRATEGIES[kind]()
    except KeyError:
        raise ValueError(f"unknown behaviour {kind!r}") from None

"""Which candidates stage 2 measures in a window, under a fixed per-window budget.

Stage 2 is the validator's heavy part: a few forward passes per candidate, so its cost grows
with the number of miners while the window does not. With a budget of B measurements per window
and M registered miners, every miner is measured at least once per *epoch* of P = ceil(M / B)
windows, in a window only the validator knows:

- epoch e = w // P; the miners are ordered by a keyed hash of (secret, e, uid) and the i-th
  gets slot i mod P, so each slot holds at most B miners;
- window w measures the candidates (those that passed stage 1) in slot w mod P, then fills the
  rest of the budget with the other candidates in a second keyed order of (secret, w, uid).

The keys come from the validator's private secret, so a miner cannot tell in which window of an
epoch it is measured: free-riding in any one window is caught with probability >= 1/P, and
every payload still has to pass stage 1 every window. Between two measurements of a miner that
passes stage 1 throughout lie at most 2P - 1 windows (first slot of one epoch, last of the
next), so the payment gate excuses ``excused_windows`` = 2(P - 1) windows beyond its usual
staleness: "not sampled this window" never costs payment. With no budget, or M <= B, P = 1:
every candidate every window, and nothing is excused.

When M changes, P may change and an epoch boundary move; the 2P - 1 bound holds while M is
steady, and the fill makes it loose in practice (spare budget goes to the other candidates).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection
from dataclasses import dataclass


class SamplingError(ValueError):
    """A sampling setting that cannot work; the message names it and the fix."""


@dataclass(frozen=True)
class StageTwoSample:
    """The candidates measured this window and what the payment gate must excuse."""

    chosen: tuple[int, ...]  # sorted uids to measure
    period: int  # P: windows per epoch

    @property
    def excused_windows(self) -> int:
        """Extra windows a miner may go unmeasured through no fault of its own."""
        return 2 * (self.period - 1)


def sampling_period(miners: int, budget: int | None) -> int:
    """P = ceil(miners / budget) (1 without a budget)."""
    if budget is None:
        return 1
    if budget < 1:
        raise SamplingError(f"stage-2 budget {budget} must be at least 1 (or unset: measure every candidate)")
    return max(1, math.ceil(miners / budget))


def _rank(secret: bytes, label: bytes, counter: int, uid: int) -> bytes:
    # keyed BLAKE2b: without the secret the order is unpredictable, with it reproducible
    data = label + counter.to_bytes(8, "little") + uid.to_bytes(8, "little")
    return hashlib.blake2b(data, key=secret[:64], digest_size=16).digest()


def slots(miners: Collection[int], epoch: int, period: int, secret: bytes) -> dict[int, int]:
    """uid -> its slot (0 .. period-1) in ``epoch``: a keyed order dealt round-robin."""
    order = sorted(set(miners), key=lambda u: (_rank(secret, b"tessera-slot", epoch, u), u))
    return {uid: i % period for i, uid in enumerate(order)}


def sample_candidates(
    candidates: Collection[int], miners: Collection[int], window: int, secret: bytes, budget: int | None
) -> StageTwoSample:
    """The window's stage-2 sample: ``candidates`` (passed stage 1) among ``miners`` (registered)."""
    if len(secret) < 16:
        raise SamplingError("the validator secret must be at least 16 bytes, or miners could guess the sample")
    period = sampling_period(len(set(miners) | set(candidates)), budget)
    if period == 1:
        return StageTwoSample(tuple(sorted(set(candidates))), 1)
    slot_of = slots(set(miners) | set(candidates), window // period, period, secret)
    due = sorted(u for u in set(candidates) if slot_of[u] == window % period)
    rest = sorted(set(candidates) - set(due), key=lambda u: (_rank(secret, b"tessera-fill", window, u), u))
    chosen = due[:budget] + rest[: max(0, budget - len(due))]
    return StageTwoSample(tuple(sorted(chosen)), period)

"""Updates far larger than the window's typical one: boosting, not contribution.

Honest miners of one window train the same number of inner steps at the same learning rate from
the same θ_w, so their updates' norms are close. A miner that multiplies its update buys a
larger LossScore (a bigger step lowers loss more, until it overshoots) and so more weight, without
contributing more. Measured on the local subnet before this rule: two miners publishing their
honest payload x3 next to three honest ones held about 40 % of the miner weight every window
(``scripts/attack_report.py --behaviours scaled``).

So the validator, with at least ``MIN_PEERS`` candidates in a window:
1. rejects an update whose norm is more than ``NORM_OUTLIER_FACTOR`` x the window's typical norm
   over the same parameters (``typical_norms``: per parameter the median; a fault, ``out_of_bounds``);
2. measures every other update scaled down to at most that typical norm, as the aggregate's
   per-parameter clip would apply it, so scaling up below the factor buys nothing in the
   measurement either.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

import torch

from compression.sparse import SparseTensor, SparseUpdate

NORM_OUTLIER_FACTOR = 2.0
MIN_PEERS = 3  # below this the median says little about what is typical


def update_norm(update: SparseUpdate) -> float:
    """The L2 norm of the whole update (all parameters), in float64."""
    return float(torch.sqrt(sum((t.values.double() ** 2).sum() for t in update.values()) or torch.tensor(0.0)))


def typical_norm(norms: Mapping[int, float]) -> float | None:
    """The median of ``norms``; None with fewer than MIN_PEERS of them."""
    if len(norms) < MIN_PEERS:
        return None
    return statistics.median(norms.values())


def typical_norms(updates: Mapping[int, SparseUpdate]) -> dict[int, float]:
    """Per uid, what its update's norm would be if it were typical of the window, judged on the
    parameters at least MIN_PEERS updates hold: ``norm × typical_S / norm_S``, where over those
    parameters S ``norm_S`` is the update's own norm and ``typical_S`` the root of the sum of
    each parameter's median norm among the updates holding it.

    Whole-model updates are compared with whole-model updates. A pipeline stage's partial update
    (``compression.StageClaim``) is compared with the window's updates restricted to its layers,
    so a whole-model update is not called boosted because half the window sent halves. Parameters
    fewer than MIN_PEERS updates hold say nothing about what is typical and are left out of the
    comparison (a window with a lone stage must not take the others out of the rule). A uid is
    absent when none of its parameters is held by MIN_PEERS updates."""
    held: dict[str, dict[int, float]] = {}
    for uid, update in updates.items():
        for name, t in update.items():
            held.setdefault(name, {})[uid] = float(t.values.double().norm())
    typical = {name: typical_norm(per_uid) for name, per_uid in held.items()}
    out = {}
    for uid, update in updates.items():
        judged = [name for name in update if typical[name] is not None]
        own = math.sqrt(sum(held[name][uid] ** 2 for name in judged))
        if not judged or own <= 0:
            continue
        whole = math.sqrt(sum(held[name][uid] ** 2 for name in update))
        out[uid] = whole * math.sqrt(sum(typical[name] ** 2 for name in judged)) / own
    return out


def norm_outliers(
    norms: Mapping[int, float], typical: Mapping[int, float], factor: float = NORM_OUTLIER_FACTOR
) -> dict[int, str]:
    """uid -> why its update is an outlier, for every norm above ``factor`` x its typical norm."""
    return {
        uid: f"update norm {norm:.3g} is {norm / typical[uid]:.1f}x the window's typical {typical[uid]:.3g}"
        for uid, norm in sorted(norms.items())
        if typical.get(uid, 0.0) > 0 and norm > factor * typical[uid]
    }


def scaled_to(update: SparseUpdate, norm: float, limit: float | None) -> SparseUpdate:
    """``update`` scaled down so its norm is at most ``limit`` (unchanged when already under it)."""
    if limit is None or norm <= limit or norm <= 0:
        return update
    factor = limit / norm
    return {name: SparseTensor(t.shape, t.indices, t.values * factor) for name, t in update.items()}

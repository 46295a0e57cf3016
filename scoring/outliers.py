"""Updates far larger than the window's typical one: boosting, not contribution.

Honest miners of one window train the same number of inner steps at the same learning rate from
the same θ_w, so their updates' norms are close. A miner that multiplies its update buys a
larger LossScore (a bigger step lowers loss more, until it overshoots) and so more weight, without
contributing more. Measured on the local subnet before this rule: two miners publishing their
honest payload x3 next to three honest ones held about 40 % of the miner weight every window
(``scripts/attack_report.py --behaviours scaled``).

So the validator, with at least ``MIN_PEERS`` candidates in a window:
1. rejects an update whose norm is more than ``NORM_OUTLIER_FACTOR`` x the window's median norm
   (a fault, ``out_of_bounds``);
2. measures every other update scaled down to at most the median norm, as the aggregate's clip
   would apply it, so scaling up below the factor buys nothing in the measurement either.
"""

from __future__ import annotations

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
    """The window's median update norm; None with fewer than MIN_PEERS candidates."""
    if len(norms) < MIN_PEERS:
        return None
    return statistics.median(norms.values())


def norm_outliers(norms: Mapping[int, float], factor: float = NORM_OUTLIER_FACTOR) -> dict[int, str]:
    """uid -> why its update is an outlier, for every norm above ``factor`` x the median."""
    median = typical_norm(norms)
    if median is None or median <= 0:
        return {}
    return {
        uid: f"update norm {norm:.3g} is {norm / median:.1f}x the window's median {median:.3g}"
        for uid, norm in sorted(norms.items())
        if norm > factor * median
    }


def scaled_to(update: SparseUpdate, norm: float, limit: float | None) -> SparseUpdate:
    """``update`` scaled down so its norm is at most ``limit`` (unchanged when already under it)."""
    if limit is None or norm <= limit or norm <= 0:
        return update
    factor = limit / norm
    return {name: SparseTensor(t.shape, t.indices, t.values * factor) for name, t in update.items()}

"""Incentive from validator weights: a small, stake-weighted consensus (the devchain's Yuma).

For each miner j, the consensus weight c_j is the largest value that validators holding at least
``kappa`` of the stake gave j (a stake-weighted upper quantile; ``kappa = 0.5`` is the
stake-weighted median). Every validator's weight is clipped to it, ``w'_ij = min(w_ij, c_j)``, so
a minority cannot lift a miner above what the majority gives it. Incentive is the stake-weighted
sum of the clipped weights, normalised to sum to 1:

    incentive_j  ∝  Σ_i  s_i · min(w_ij, c_j)

This keeps the property that matters for tests and the local net (honest stake decides who is
paid) without bonds, dividends or emission, which the devchain does not model.
"""

from __future__ import annotations

from collections.abc import Mapping


def normalize_weights(weights: Mapping[int, float]) -> dict[int, float]:
    """Drop non-positive entries and scale the rest to sum to 1 (empty when nothing is left)."""
    kept = {int(uid): float(w) for uid, w in weights.items() if w > 0}
    total = sum(kept.values())
    return {uid: w / total for uid, w in sorted(kept.items())} if total > 0 else {}


def _consensus_weight(column: list[tuple[float, float]], kappa: float) -> float:
    """Largest w such that the stake giving >= w is at least kappa of the total stake."""
    total = sum(stake for _, stake in column)
    if total <= 0:
        return 0.0
    above = 0.0
    for weight, stake in sorted(column, key=lambda pair: -pair[0]):
        above += stake
        if above >= kappa * total:
            return weight
    return 0.0


def stake_weighted_incentive(
    stakes: Mapping[int, float],
    weights: Mapping[int, Mapping[int, float]],
    kappa: float = 0.5,
) -> dict[int, float]:
    """Incentive per miner uid from ``{validator: {miner: weight}}`` rows and validator stakes.

    Rows are normalised first; validators with no stake or no weights take no part. Miners that
    nobody weights are absent from the result.
    """
    if not 0 < kappa <= 1:
        raise ValueError("kappa must be in (0, 1]")
    rows = {v: normalize_weights(row) for v, row in weights.items() if stakes.get(v, 0.0) > 0}
    rows = {v: row for v, row in rows.items() if row}
    miners = sorted({m for row in rows.values() for m in row})
    raw: dict[int, float] = {}
    for miner in miners:
        column = [(row.get(miner, 0.0), stakes[v]) for v, row in rows.items()]
        cap = _consensus_weight(column, kappa)
        raw[miner] = sum(stake * min(w, cap) for w, stake in column)
    return normalize_weights(raw)

"""From score book to weights: who has earned payment, in what order, and how much.

Payment is gated on *evidence of contribution*, not on a positive rating:
- the update lowers loss on data the miner could not know (EMA of LossScore > 0);
- it helps the miner's own assigned data more than random data, with statistical confidence:
  the combined Welch statistic Z (``MinerRecord.evidence_z``) exceeds ``evidence_threshold``.
  A free-rider's Z is about N(0, 1), so it is paid with the normal tail probability of the
  threshold (1 % at 2.33); an honest miner's first window alone usually clears it
  (docs/scoring.md, ``scripts/calibrate_scoring.py``);
- the miner is in sync and was evaluated within the last ``stale_windows`` windows.

Among the eligible, the rating only *orders* payment: final score = strength(ordinal) × sync,
where strength is a softplus of the ordinal, so a fresh rating (ordinal ≈ 0) or a weak one
(ordinal < 0) still ranks instead of zeroing an honest miner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from protocol.hparams import OuterConfig, ScoringConfig
from scoring.ratings import Rating
from scoring.state import MinerRecord, ScoreBook


@dataclass(frozen=True)
class GatePolicy:
    stale_windows: int = 2
    min_sync: float = 0.5
    evidence_threshold: float = 2.33
    beta: float = 7.0  # OpenSkill beta: the scale of the ordinal

    @classmethod
    def from_config(cls, cfg: ScoringConfig) -> GatePolicy:
        return cls(cfg.stale_windows, cfg.min_sync_score, cfg.evidence_threshold, cfg.openskill_beta)


@dataclass(frozen=True)
class WeightPolicy:
    gather_peers: int = 20
    reserve_peers: int = 10
    gather_tier_share: float = 0.75
    reserve_decay: float = 0.5
    burn_fraction: float = 0.5

    @classmethod
    def from_config(cls, scoring: ScoringConfig, outer: OuterConfig) -> WeightPolicy:
        return cls(
            outer.gather_peers,
            outer.reserve_peers,
            scoring.gather_tier_share,
            scoring.reserve_decay,
            scoring.burn_fraction,
        )


class Unpaid(StrEnum):
    """Why an evaluated miner earns nothing, one gate each (a StrEnum: logs and events print the words)."""

    NOT_EVALUATED = "not evaluated recently"
    OUT_OF_SYNC = "out of sync"
    NO_IMPROVEMENT = "no improvement on unseen data"
    WEAK_EVIDENCE = "not enough unique-data evidence yet"


def payment_gate(rec: MinerRecord, window: int, gate: GatePolicy) -> Unpaid | None:
    """Why ``rec`` is not paid at ``window``, or None when it has shown contribution."""
    if rec.last_evaluated_window is None or rec.last_evaluated_window < window - gate.stale_windows:
        return Unpaid.NOT_EVALUATED
    if rec.sync < gate.min_sync:
        return Unpaid.OUT_OF_SYNC
    if rec.loss_ema <= 0:
        return Unpaid.NO_IMPROVEMENT
    if rec.evidence_z <= gate.evidence_threshold:
        return Unpaid.WEAK_EVIDENCE
    return None


def rank_strength(rating: Rating, beta: float) -> float:
    """Positive, increasing in the ordinal: ≈ ordinal when large, decays smoothly below zero."""
    x = rating.ordinal / beta
    return beta * (x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x)))


def final_score(rec: MinerRecord, window: int, gate: GatePolicy) -> float:
    if payment_gate(rec, window, gate) is not None:
        return 0.0
    return rank_strength(rec.rating, gate.beta) * rec.sync


def final_scores(book: ScoreBook, window: int, gate: GatePolicy) -> dict[int, float]:
    return {uid: final_score(rec, window, gate) for uid, rec in sorted(book.records.items())}


def compute_weights(
    scores: Mapping[int, float], policy: WeightPolicy, burn_uid: int | None = None
) -> dict[int, float]:
    """Weights summing to 1 over miners with score > 0 (and ``burn_uid``).

    Miners are ranked by score (ties: lower uid) into the slots of ``slot_weights``; only filled
    slots are paid and their weights are scaled to the non-burned share. ``burn_fraction`` goes
    to ``burn_uid``; with ``burn_uid=None`` nothing is burned (the chain normalizes weights, so
    withholding a share is the same as not burning it). No eligible miner: everything to
    ``burn_uid``, or ``{}`` (the caller should then skip ``set_weights``).
    """
    ranked = sorted((u for u, s in scores.items() if s > 0 and u != burn_uid), key=lambda u: (-scores[u], u))
    slots = slot_weights(policy)
    paid = ranked[: len(slots)]
    if not paid:
        return {} if burn_uid is None else {burn_uid: 1.0}
    burn = policy.burn_fraction if burn_uid is not None else 0.0
    total = sum(slots[: len(paid)])
    out = {u: (1.0 - burn) * w / total for u, w in zip(paid, slots, strict=False)}
    if burn_uid is not None and burn > 0:
        out[burn_uid] = burn
    return out


def slot_weights(policy: WeightPolicy) -> list[float]:
    """Relative pay of each rank in a full field, non-increasing.

    The reference layout: the ``gather_peers`` gather slots share ``gather_tier_share`` on a
    linear ramp from 2 (first) to 1 (last); the ``reserve_peers`` reserve slots share the rest
    geometrically (×``reserve_decay``). Taken literally, the first reserve slot would earn more
    than the last gather slots (with 20 + 10 slots: 0.125 vs 0.025), rewarding a miner for
    ranking *lower*; so each slot is capped at the slot above it. With 20 + 10 slots the reserve
    tier then holds 0.106 against the gather tier's 0.75, i.e. 12 % of the paid weight, not 25 %.
    """
    g, r = policy.gather_peers, policy.reserve_peers
    ramp = [2.0 - i / (g - 1) for i in range(g)] if g > 1 else [1.0] * g
    geometric = [policy.reserve_decay**i for i in range(r)]
    g_share = policy.gather_tier_share if r else 1.0
    slots = [g_share * x / sum(ramp) for x in ramp]
    if r:
        slots += [(1.0 - g_share) * x / sum(geometric) for x in geometric]
    for i in range(1, len(slots)):
        slots[i] = min(slots[i], slots[i - 1])
    return slots

"""One window of Gauntlet bookkeeping: fold stage-1 verdicts and stage-2 measurements into the
score book, rate, and turn the book into weights.

The validator loop does the I/O and the measuring; this module only decides. Order per window:
stage-1 results (faults count as the worst window, excused misses only age the record),
LossScore into an EMA and the window's unique-data statistic t into the decayed sums behind Z,
OpenSkill ratings in groups, latest sync score, then final scores and weights
(``scoring.weights``).

Z = Σ_a d^a t_a / sqrt(Σ_a d^(2a)), a = windows since the evaluation. Each t is about N(0, 1)
for a free-rider, so Z is too, whatever the ages: the payment threshold is a false-pay rate.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from protocol.acceptance import RejectReason, Stage1Result
from protocol.hparams import OuterConfig, ScoringConfig
from scoring.lossscore import T_CLIP, LossMeasurement, loss_score, unique_t
from scoring.ratings import make_model, rate_window
from scoring.state import MinerRecord, ScoreBook
from scoring.weights import GatePolicy, WeightPolicy, compute_weights, final_scores

# What a fault window feeds the record: no improvement, and the worst unique-data statistic.
FAULT_LOSS_SAMPLE = 0.0
FAULT_T = -T_CLIP


class AlreadyScoredError(ValueError):
    """The window was already folded into the book (e.g. re-run after a restart)."""


@dataclass(frozen=True)
class WindowResult:
    window: int
    loss_scores: dict[int, float]  # this window's LossScore per evaluated uid
    t_stats: dict[int, float]  # this window's unique-data statistic per evaluated uid
    scores: dict[int, float]  # final scores after this window (0 = not paid)
    weights: dict[int, float]  # what to set on chain (sums to 1, or empty)


def _ema(old: float, sample: float, alpha: float) -> float:
    return (1.0 - alpha) * old + alpha * sample


def fold_t(rec: MinerRecord, window: int, t: float, decay: float) -> None:
    """Add window ``window``'s statistic to the record's Z: older terms age by d per window.

    Ages count calendar windows, so evidence from before an absence weighs less. Z is a ratio, so
    only the ages relative to each other matter; the sums never need decaying to "now"."""
    if rec.evidence_window is not None:
        keep = decay ** max(0, window - rec.evidence_window)
        rec.evidence_sum *= keep
        rec.evidence_weight *= keep * keep
    rec.evidence_sum += t
    rec.evidence_weight += 1.0
    rec.evidence_window = window
    rec.last_t = t


def _add_evidence(rec: MinerRecord, window: int, loss: float, t: float, cfg: ScoringConfig) -> None:
    rec.loss_ema = _ema(rec.loss_ema, loss, cfg.loss_ema_alpha)
    fold_t(rec, window, t, cfg.evidence_decay)


@dataclass(frozen=True)
class WindowEvidence:
    """What the validator loop measured for one window, as ``update_book`` consumes it.

    ``hotkeys`` is the full registered {uid: hotkey} map (records of others are dropped);
    ``stage1`` holds one verdict per miner looked at; ``measurements`` the stage-2 result of each
    uid that passed stage 1; ``sync`` the sync score of each uid whose fingerprint was read.
    """

    window: int
    hotkeys: Mapping[int, str]
    stage1: Collection[Stage1Result]
    measurements: Mapping[int, LossMeasurement] = field(default_factory=dict)
    sync: Mapping[int, float] = field(default_factory=dict)


def update_book(
    book: ScoreBook, evidence: WindowEvidence, cfg: ScoringConfig, seed: str = ""
) -> tuple[dict[int, float], dict[int, int]]:
    """Fold ``evidence`` into ``book``; returns (LossScores, t statistics) of evaluated uids.

    ``seed`` varies the rating groups by run.
    """
    window, hotkeys, measurements = evidence.window, evidence.hotkeys, evidence.measurements
    if book.last_window is not None and window <= book.last_window:
        raise AlreadyScoredError(f"window {window} already scored (book at {book.last_window})")
    book.reconcile(hotkeys)
    scores: dict[int, float] = {}
    t_stats: dict[int, float] = {}
    for res in evidence.stage1:
        if res.uid not in hotkeys:
            continue
        rec = book.record(res.uid, hotkeys[res.uid], window)
        if res.reason is not RejectReason.MISSING:
            rec.last_seen_window = window
        if res.passed and res.uid in measurements:
            m = measurements[res.uid]
            scores[res.uid], t_stats[res.uid] = loss_score(m), unique_t(m)
            _add_evidence(rec, window, scores[res.uid], t_stats[res.uid], cfg)
            rec.last_loss_score = scores[res.uid]
            rec.last_evaluated_window = window
            rec.windows_evaluated += 1
            rec.last_reason = None
        elif not res.passed:
            rec.windows_rejected += 1
            rec.last_reason = str(res.reason)
            if res.is_fault:
                _add_evidence(rec, window, FAULT_LOSS_SAMPLE, FAULT_T, cfg)
    for uid, s in evidence.sync.items():
        if uid in hotkeys:
            book.record(uid, hotkeys[uid], window).sync = float(s)
    _rate(book, scores, cfg, f"{seed}:{window}")
    book.last_window = window
    return scores, t_stats


def _rate(book: ScoreBook, scores: Mapping[int, float], cfg: ScoringConfig, seed: str) -> None:
    model = make_model(cfg.openskill_beta, cfg.openskill_tau)
    current = {u: book.records[u].rating for u in scores}
    for uid, rating in rate_window(current, scores, model, cfg.rating_group_size, seed).items():
        book.records[uid].set_rating(rating)


def score_window(
    book: ScoreBook,
    evidence: WindowEvidence,
    scoring: ScoringConfig,
    outer: OuterConfig,
    burn_uid: int | None = None,
    seed: str = "",
    gate: GatePolicy | None = None,
) -> WindowResult:
    """``update_book`` then final scores and weights: everything a validator needs per window.

    ``gate`` replaces the configured payment gate (a validator that samples stage 2 widens its
    staleness by the windows the sampling excuses, ``scoring.sampling``)."""
    loss, t_stats = update_book(book, evidence, scoring, seed)
    scores = final_scores(book, evidence.window, gate or GatePolicy.from_config(scoring))
    weights = compute_weights(scores, WeightPolicy.from_config(scoring, outer), burn_uid)
    return WindowResult(evidence.window, loss, t_stats, scores, weights)

"""Say why: the validator's per-window verdict on each miner, and the weights it set, as lines an
operator can read in the log (and the events file keeps).

One compact line per miner::

    uid 3: paid 0.250 (score 4.12)
    uid 5: 0 — not enough unique-data evidence yet (Z 1.20 <= 2.33)
    uid 7: rejected missing — bucket unreachable: access denied ...

The reasons are typed where they are decided (``protocol.acceptance.RejectReason`` for stage 1,
``scoring.weights.Unpaid`` for the payment gate); this module only words them with the numbers
behind them. A rejection's detail can carry text from a peer's server, so it is flattened to one
line of bounded length before it reaches a log or an event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from neurons.events import one_line
from protocol.acceptance import Stage1Result
from scoring.state import MinerRecord, ScoreBook
from scoring.weights import GatePolicy, Unpaid, payment_gate


def unpaid_detail(reason: Unpaid, rec: MinerRecord, window: int, gate: GatePolicy) -> str:
    """The numbers behind a payment gate's ``reason``."""
    if reason is Unpaid.NOT_EVALUATED:
        if rec.last_evaluated_window is None:
            return "never evaluated"
        return f"last evaluated in window {rec.last_evaluated_window}, {window - rec.last_evaluated_window} ago"
    if reason is Unpaid.OUT_OF_SYNC:
        return f"sync {rec.sync:.2f} < {gate.min_sync:.2f}"
    if reason is Unpaid.NO_IMPROVEMENT:
        return f"LossScore EMA {rec.loss_ema:.3g} <= 0"
    return f"Z {rec.evidence_z:.2f} <= {gate.evidence_threshold:.2f}"


def miner_verdict(
    uid: int, stage1: Stage1Result | None, rec: MinerRecord | None, window: int,
    score: float, weight: float, gate: GatePolicy,
) -> str:
    """One miner's line for ``window``."""
    paid = f"paid {weight:.3f} (score {score:.3g})"
    if stage1 is not None and not stage1.passed:
        line = f"uid {uid}: rejected {stage1.reason}"
        if stage1.detail:
            line += f" — {one_line(stage1.detail)}"
        return line + (f"; still {paid} from earlier windows" if score > 0 else "")
    if score > 0:
        return f"uid {uid}: {paid}"
    if rec is None:
        return f"uid {uid}: 0 — no record yet"
    reason = payment_gate(rec, window, gate)
    if reason is None:  # eligible, but ranked past the paid slots
        return f"uid {uid}: 0 — eligible but ranked below the paid slots (score {score:.3g})"
    return f"uid {uid}: 0 — {reason} ({unpaid_detail(reason, rec, window, gate)})"


def window_verdicts(
    window: int, stage1: Mapping[int, Stage1Result], book: ScoreBook,
    scores: Mapping[int, float], weights: Mapping[int, float], gate: GatePolicy,
) -> dict[int, str]:
    """{uid: line} for every miner judged in ``window``, ascending uid."""
    uids = sorted(set(stage1) | set(scores))
    return {
        uid: miner_verdict(uid, stage1.get(uid), book.records.get(uid), window, scores.get(uid, 0.0),
                           weights.get(uid, 0.0), gate)
        for uid in uids
    }


def weights_line(status: str, note: str, weights: Mapping[int, float], burn_uid: int | None) -> str:
    """What happened to the chain weights this window (``status`` and ``note`` from
    ``neurons.weights_schedule``), with the shares the window's scores give."""
    shares = ", ".join(
        f"uid {u} {w:.3f}{' (burn)' if u == burn_uid else ''}" for u, w in sorted(weights.items(), key=lambda x: (-x[1], x[0]))
    ) or "none earned"
    if status == "set":
        return f"weights: {one_line(note)}: {shares}"
    if status == "idle":
        return f"weights: not due this window (scores give {shares})"
    return f"weights: {status} — {one_line(note)} (scores give {shares})"


def log_window(
    log: logging.Logger, node: str, window: int, verdicts: Mapping[int, str], weights: str,
) -> None:
    """The verdict lines, then the weights line, each its own log record."""
    for line in verdicts.values():
        log.info("%s window %d %s", node, window, line)
    log.info("%s window %d %s", node, window, weights)


def rejection_details(stage1: Mapping[int, Stage1Result]) -> dict[int, str]:
    """{uid: detail} of the rejected, as one bounded line each (events keep them)."""
    return {uid: one_line(r.detail) for uid, r in stage1.items() if not r.passed and r.detail}

import math
import random
from pathlib import Path

import pytest

from protocol.acceptance import RejectReason, Stage1Result
from protocol.hparams import OuterConfig, ScoringConfig
from scoring.gauntlet import (
    AlreadyScoredError,
    WindowEvidence,
    WindowResult,
    fold_t,
    score_window,
    update_book,
)
from scoring.lossscore import LossMeasurement
from scoring.state import ScoreBook

CFG, OUTER = ScoringConfig(), OuterConfig(gather_peers=4, reserve_peers=2)
KINDS = {
    1: "honest",
    2: "honest",
    3: "honest",
    4: "weaker",
    5: "free-rider",
    6: "copier",
    7: "attacker",
    8: "newcomer",
}
JOINS = 4
N_SEQ = 16  # the tiny preset: eval_batches 2 x batch_size 8, own and random each
# (mean relative improvement on random data, extra on own data) per kind; spread 0.02 per sequence
GAINS = {"honest": (0.03, 0.03), "newcomer": (0.03, 0.03), "weaker": (0.01, 0.03), "free-rider": (0.03, 0.0),
         "attacker": (-0.02, 0.03)}


def measurement(rng: random.Random, rand_gain: float, own_edge: float, spread: float = 0.02) -> LossMeasurement:
    """Per-sequence losses whose relative improvements are N(gain, spread) on each side."""
    before = [4.0 + rng.gauss(0, 0.3) for _ in range(2 * N_SEQ)]
    gains = [rng.gauss(rand_gain + own_edge, spread) for _ in range(N_SEQ)]
    gains += [rng.gauss(rand_gain, spread) for _ in range(N_SEQ)]
    after = [b * (1 - g) for b, g in zip(before, gains, strict=True)]
    return LossMeasurement.of(before[:N_SEQ], after[:N_SEQ], before[N_SEQ:], after[N_SEQ:])


def window_inputs(w: int, rng: random.Random):
    """Stage-1/2 outcomes per miner kind, as the validator loop would measure them."""
    stage1, meas = [], {}
    for uid, kind in KINDS.items():
        if kind == "newcomer" and w < JOINS:
            continue
        if kind == "copier":
            stage1.append(Stage1Result.reject(uid, RejectReason.COPY, "copy of uid 1"))
            continue
        stage1.append(Stage1Result.accept(uid))
        meas[uid] = measurement(rng, *GAINS[kind])
    return stage1, meas


def simulate(windows: int, seed: int, path: Path | None = None) -> list[WindowResult]:
    rng = random.Random(seed)
    book, out = ScoreBook(), []
    for w in range(windows):
        stage1, meas = window_inputs(w, rng)
        hotkeys = {r.uid: f"hk{r.uid}" for r in stage1} | {9: "hk9"}
        if path is not None:  # a validator restarted between every window
            book.save(path)
            book = ScoreBook.load(path)
        sync = dict.fromkeys(hotkeys, 1.0)
        out.append(score_window(book, WindowEvidence(w, hotkeys, stage1, meas, sync), CFG, OUTER, burn_uid=0, seed="t"))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_who_gets_paid(seed):
    results = simulate(12, seed)
    total = {u: sum(r.weights.get(u, 0.0) for r in results) for u in KINDS}
    for uid in (6, 7):  # copier, attacker
        assert total[uid] == 0.0, KINDS[uid]
    last = results[-1].weights
    assert all(last.get(u, 0) > 0 for u in (1, 2, 3, 4, 8))  # honest, weaker, newcomer
    for uid in (1, 2, 3, 4):  # honest and weaker: paid from the first evaluated window on
        assert all(r.weights.get(uid, 0) > 0 for r in results), uid
    assert all(r.weights.get(8, 0) > 0 for r in results[JOINS:])  # newcomer: from the window it joins
    for r in results:
        assert sum(r.weights.values()) == pytest.approx(1.0)
        assert r.weights.get(0) == pytest.approx(0.5 if len(r.weights) > 1 else 1.0)


def test_free_rider_earns_next_to_nothing():
    # its t is noise around 0 (Student-t with ~30 df), so Z > 2.33 is a ~1.5 % event per window
    free, honest, paid_windows, windows = 0.0, 0.0, 0, 0
    for seed in range(24):
        results = simulate(16, seed)
        free += sum(r.weights.get(5, 0.0) for r in results)
        honest += sum(r.weights.get(1, 0.0) for r in results)
        paid_windows += sum(r.weights.get(5, 0.0) > 0 for r in results)
        windows += len(results)
    assert paid_windows <= 0.03 * windows and free <= 0.05 * honest


def one_window(book: ScoreBook, w: int, meas: LossMeasurement, uid: int = 1) -> WindowResult:
    hk = {uid: f"hk{uid}"}
    ev = WindowEvidence(w, hk, [Stage1Result.accept(uid)], {uid: meas}, {uid: 1.0})
    return score_window(book, ev, CFG, OUTER, burn_uid=0)


def test_clearly_honest_record_paid_from_its_first_window():
    result = one_window(ScoreBook(), 0, measurement(random.Random(0), 0.03, 0.03))
    assert result.t_stats[1] > CFG.evidence_threshold
    assert result.scores[1] > 0 and result.weights[1] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "meas",
    [
        LossMeasurement.of([4.0] * N_SEQ, [4.0] * N_SEQ, [4.0] * N_SEQ, [4.0] * N_SEQ),  # zero update
        measurement(random.Random(1), 0.03, 0.0),  # helps everything alike: someone else's data
        measurement(random.Random(2), 0.03, -0.01),  # helps random data more: the aggregate, re-sent
        measurement(random.Random(3), -0.03, 0.05),  # own-data edge but harms unseen data: loss EMA gate
    ],
)
def test_free_rider_like_records_not_paid(meas: LossMeasurement):
    book = ScoreBook()
    for w in range(4):
        result = one_window(book, w, meas)
        assert result.scores[1] == 0.0 and 1 not in result.weights


def test_z_combines_windows_with_decay_by_age():
    d, book = CFG.evidence_decay, ScoreBook()
    rec = book.record(1, "a", 0)
    for w, t in ((0, 3.0), (1, -1.0), (3, 2.0)):  # window 2 missed: ages are calendar windows
        fold_t(rec, w, t, d)
    ages = {0: 3, 1: 2, 3: 0}
    ts = {0: 3.0, 1: -1.0, 3: 2.0}
    expect = sum(d ** ages[w] * ts[w] for w in ts) / math.sqrt(sum(d ** (2 * ages[w]) for w in ts))
    assert rec.evidence_z == pytest.approx(expect) and rec.last_t == 2.0 and rec.evidence_window == 3
    # one window: Z = t; a steady t adds up (Z grows towards t·(1/(1−d))/sqrt(1/(1−d²)) ≈ 2.4 t)
    steady = book.record(2, "b", 0)
    fold_t(steady, 5, 1.5, d)
    assert steady.evidence_z == pytest.approx(1.5)
    for w in range(6, 30):
        fold_t(steady, w, 1.5, d)
    assert steady.evidence_z == pytest.approx(1.5 * math.sqrt((1 + d) / (1 - d)), rel=1e-3)


def test_restart_between_windows_changes_nothing(tmp_path: Path):
    plain = simulate(8, 3)
    restarted = simulate(8, 3, tmp_path / "book.json")
    assert [r.weights for r in plain] == [r.weights for r in restarted]
    assert [r.scores for r in plain] == [r.scores for r in restarted]


def test_faults_count_against_excused_misses_only_age():
    book = ScoreBook()
    hk = {1: "a", 2: "b", 3: "c"}
    good = measurement(random.Random(0), 0.03, 0.03)
    update_book(book, WindowEvidence(0, hk, [Stage1Result.accept(u) for u in hk], dict.fromkeys(hk, good)), CFG)
    before = {u: (r.evidence_sum, r.evidence_weight) for u, r in book.records.items()}
    stage1 = [
        Stage1Result.reject(1, RejectReason.MISSING),
        Stage1Result.reject(2, RejectReason.NON_FINITE),
        Stage1Result.accept(3),  # passed but not measured (e.g. evaluation budget): no change
    ]
    update_book(book, WindowEvidence(1, hk, stage1, sync={1: 0.0}), CFG)
    r1, r2, r3 = book.records[1], book.records[2], book.records[3]
    assert (r1.evidence_sum, r1.evidence_weight) == before[1] and r1.last_seen_window == 0 and r1.sync == 0.0
    # a fault is the worst window: t = -4, folded in with the usual decay
    assert r2.last_t == -4.0 and r2.evidence_sum == pytest.approx(0.7 * before[2][0] - 4.0)
    assert r2.windows_rejected == 1 and r2.last_reason == "non_finite" and r2.last_seen_window == 1
    assert (r3.evidence_sum, r3.windows_evaluated) == (before[3][0], 1)
    with pytest.raises(AlreadyScoredError):
        update_book(book, WindowEvidence(1, hk, []), CFG)


def test_deregistered_uid_reset_for_new_hotkey():
    book = ScoreBook()
    good = measurement(random.Random(0), 0.03, 0.03)
    update_book(book, WindowEvidence(0, {1: "old"}, [Stage1Result.accept(1)], {1: good}), CFG)
    assert book.records[1].windows_evaluated == 1
    update_book(book, WindowEvidence(1, {1: "new"}, [Stage1Result.accept(1)], {1: good}), CFG)
    assert book.records[1].hotkey == "new" and book.records[1].windows_evaluated == 1
    assert book.records[1].first_window == 1

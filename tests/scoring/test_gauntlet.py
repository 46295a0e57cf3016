import random
from pathlib import Path

import pytest

from protocol.acceptance import RejectReason, Stage1Result
from protocol.hparams import OuterConfig, ScoringConfig
from scoring.gauntlet import AlreadyScoredError, WindowEvidence, WindowResult, score_window, update_book
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


def window_inputs(w: int, rng: random.Random):
    """Synthetic stage-1/2 outcomes per miner kind (what the validator loop would measure)."""
    stage1, meas = [], {}
    for uid, kind in KINDS.items():
        if kind == "newcomer" and w < JOINS:
            continue
        if kind == "copier":
            stage1.append(Stage1Result.reject(uid, RejectReason.COPY, "copy of uid 1"))
            continue
        stage1.append(Stage1Result.accept(uid))
        gain = {"honest": 0.03, "newcomer": 0.03, "weaker": 0.01, "free-rider": 0.03, "attacker": -0.02}[kind]
        rand_gain = gain + rng.gauss(0, 0.004)
        own_gain = rand_gain + (rng.gauss(0, 0.01) if kind == "free-rider" else 0.02 + rng.gauss(0, 0.003))
        meas[uid] = LossMeasurement(4.0, 4.0 * (1 - own_gain), 4.0, 4.0 * (1 - rand_gain))
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
    assert last[4] <= min(last[u] for u in (1, 2, 3)) < max(last[u] for u in (1, 2, 3))  # weaker: less
    first_paid = next(r.window for r in results if r.weights.get(8, 0) > 0)
    assert first_paid - JOINS <= 4  # newcomer paid within a few windows
    for r in results:
        assert sum(r.weights.values()) == pytest.approx(1.0)
        assert r.weights.get(0) == pytest.approx(0.5 if len(r.weights) > 1 else 1.0)


def test_free_rider_earns_next_to_nothing():
    # its unique-data indicator is a coin flip: the evidence test pays only rare lucky streaks
    free, honest = 0.0, 0.0
    for seed in range(12):
        results = simulate(16, seed)
        free += sum(r.weights.get(5, 0.0) for r in results)
        honest += sum(r.weights.get(1, 0.0) for r in results)
    assert free <= 0.02 * honest


def test_restart_between_windows_changes_nothing(tmp_path: Path):
    plain = simulate(8, 3)
    restarted = simulate(8, 3, tmp_path / "book.json")
    assert [r.weights for r in plain] == [r.weights for r in restarted]
    assert [r.scores for r in plain] == [r.scores for r in restarted]


def test_faults_count_against_excused_misses_only_age():
    book = ScoreBook()
    hk = {1: "a", 2: "b", 3: "c"}
    good = LossMeasurement(4.0, 3.0, 4.0, 3.9)
    update_book(book, WindowEvidence(0, hk, [Stage1Result.accept(u) for u in hk], dict.fromkeys(hk, good)), CFG)
    before = {u: (r.unique_ema, r.unique_n) for u, r in book.records.items()}
    stage1 = [
        Stage1Result.reject(1, RejectReason.MISSING),
        Stage1Result.reject(2, RejectReason.NON_FINITE),
        Stage1Result.accept(3),  # passed but not measured (e.g. evaluation budget): no change
    ]
    update_book(book, WindowEvidence(1, hk, stage1, sync={1: 0.0}), CFG)
    r1, r2, r3 = book.records[1], book.records[2], book.records[3]
    assert (r1.unique_ema, r1.unique_n) == before[1] and r1.last_seen_window == 0 and r1.sync == 0.0
    assert r2.unique_ema < before[2][0] and r2.windows_rejected == 1 and r2.last_reason == "non_finite"
    assert r2.last_seen_window == 1
    assert (r3.unique_ema, r3.windows_evaluated) == (before[3][0], 1)
    with pytest.raises(AlreadyScoredError):
        update_book(book, WindowEvidence(1, hk, []), CFG)


def test_deregistered_uid_reset_for_new_hotkey():
    book = ScoreBook()
    good = LossMeasurement(4.0, 3.0, 4.0, 3.9)
    update_book(book, WindowEvidence(0, {1: "old"}, [Stage1Result.accept(1)], {1: good}), CFG)
    assert book.records[1].windows_evaluated == 1
    update_book(book, WindowEvidence(1, {1: "new"}, [Stage1Result.accept(1)], {1: good}), CFG)
    assert book.records[1].hotkey == "new" and book.records[1].windows_evaluated == 1
    assert book.records[1].first_window == 1

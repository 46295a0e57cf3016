"""Stage-2 sampling: a fixed budget per window, every miner measured within each epoch, an order
only the validator's secret gives, and a payment gate that excuses the windows left out."""

import random
from dataclasses import replace

import pytest

from protocol.acceptance import Stage1Result
from protocol.hparams import OuterConfig, ScoringConfig
from scoring.gauntlet import WindowEvidence, score_window
from scoring.lossscore import LossMeasurement
from scoring.sampling import SamplingError, sample_candidates, sampling_period, slots
from scoring.state import ScoreBook
from scoring.weights import GatePolicy, Unpaid, payment_gate

SECRET = b"s" * 32
MINERS = list(range(1, 11))


def test_no_budget_or_a_large_one_measures_every_candidate():
    for budget in (None, 10, 50):
        sample = sample_candidates([3, 1, 2], MINERS, 7, SECRET, budget)
        assert sample.chosen == (1, 2, 3) and sample.period == 1 and sample.excused_windows == 0


@pytest.mark.parametrize("budget", [1, 3, 4, 9])
def test_budget_is_respected_and_filled(budget):
    for w in range(30):
        sample = sample_candidates(MINERS, MINERS, w, SECRET, budget)
        assert len(sample.chosen) == budget and set(sample.chosen) <= set(MINERS)
        assert sample.period == sampling_period(len(MINERS), budget)
    few = sample_candidates([2, 5], MINERS, 3, SECRET, 3)
    assert few.chosen == (2, 5)  # fewer candidates than the budget: all of them


def test_slots_are_balanced():
    for epoch in range(5):
        counts = {}
        for slot in slots(MINERS, epoch, 4, SECRET).values():
            counts[slot] = counts.get(slot, 0) + 1
        assert sorted(counts.values()) == [2, 2, 3, 3]


@pytest.mark.parametrize("budget", [1, 2, 3, 4])
def test_every_miner_measured_every_epoch_and_gaps_are_bounded(budget):
    period = sampling_period(len(MINERS), budget)
    last = {u: -1 for u in MINERS}
    for w in range(12 * period):
        chosen = sample_candidates(MINERS, MINERS, w, SECRET, budget).chosen
        for u in chosen:
            assert w - last[u] <= 2 * period - 1, (u, w, last[u])
            last[u] = w
        if w % period == period - 1:  # end of an epoch: everyone was measured in it
            assert all(w - last[u] < period for u in MINERS)


def test_the_sample_depends_on_the_secret_and_is_reproducible():
    a = [sample_candidates(MINERS, MINERS, w, SECRET, 2).chosen for w in range(20)]
    assert a == [sample_candidates(MINERS, MINERS, w, SECRET, 2).chosen for w in range(20)]
    b = [sample_candidates(MINERS, MINERS, w, b"t" * 32, 2).chosen for w in range(20)]
    assert a != b
    # not a fixed rotation by uid either: the windows of one miner move from epoch to epoch
    period = sampling_period(len(MINERS), 2)
    offsets = {w % period for w, chosen in enumerate(a) if 1 in chosen}
    assert len(offsets) > 1


def test_bad_settings_are_refused():
    with pytest.raises(SamplingError, match="at least 1"):
        sample_candidates(MINERS, MINERS, 0, SECRET, 0)
    with pytest.raises(SamplingError, match="16 bytes"):
        sample_candidates(MINERS, MINERS, 0, b"short", 2)


def honest(rng: random.Random, n: int = 16) -> LossMeasurement:
    before = [4.0 + rng.gauss(0, 0.3) for _ in range(2 * n)]
    gains = [rng.gauss(0.09, 0.01) for _ in range(n)] + [rng.gauss(0.03, 0.01) for _ in range(n)]
    after = [b * (1 - g) for b, g in zip(before, gains, strict=True)]
    return LossMeasurement.of(before[:n], after[:n], before[n:], after[n:])


def test_not_sampled_windows_are_excused_by_the_gate():
    """An honest miner measured once per epoch is never "not evaluated recently" under the widened
    gate; under the configured one it would fall out between its measurements."""
    cfg, outer, rng = ScoringConfig(), OuterConfig(), random.Random(0)
    hotkeys = {u: f"hk{u}" for u in MINERS}
    book_sampled, book_plain = ScoreBook(), ScoreBook()
    stale_sampled = stale_plain = 0
    for w in range(24):
        sample = sample_candidates(MINERS, MINERS, w, SECRET, 2)
        gate = replace(GatePolicy.from_config(cfg), stale_windows=cfg.stale_windows + sample.excused_windows)
        meas = {u: honest(rng) for u in sample.chosen}
        ev = WindowEvidence(w, hotkeys, [Stage1Result.accept(u) for u in MINERS], meas, {u: 1.0 for u in MINERS})
        sampled = score_window(book_sampled, ev, cfg, outer, seed="x", gate=gate)
        score_window(book_plain, ev, cfg, outer, seed="x")
        if w >= 2 * sample.period:  # everyone has been measured at least once by now
            assert all(sampled.scores[u] > 0 for u in MINERS)
            stale_sampled += sum(payment_gate(book_sampled.records[u], w, gate) is Unpaid.NOT_EVALUATED for u in MINERS)
            plain_gate = GatePolicy.from_config(cfg)
            stale_plain += sum(payment_gate(book_plain.records[u], w, plain_gate) is Unpaid.NOT_EVALUATED for u in MINERS)
    assert stale_sampled == 0
    assert stale_plain > 0

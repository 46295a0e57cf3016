import math

import pytest

from scoring.ratings import Rating
from scoring.state import MinerRecord
from scoring.weights import (
    GatePolicy,
    WeightPolicy,
    compute_weights,
    final_score,
    payment_gate,
    rank_strength,
    slot_weights,
)

REF = WeightPolicy(
    gather_peers=20, reserve_peers=10, gather_tier_share=0.75, reserve_decay=0.5, burn_fraction=0.5
)


def test_reference_layout_sums_and_burn():
    scores = {u: 100.0 - u for u in range(1, 41)}
    w = compute_weights(scores, REF, burn_uid=0)
    assert math.isclose(sum(w.values()), 1.0)
    assert w[0] == pytest.approx(0.5)
    assert len(w) == 31  # burn + 20 gather + 10 reserve; ranks 31+ unpaid
    assert w[1] / w[20] == pytest.approx(2.0)  # linear 2 -> 1 ramp over the gather tier
    assert sum(w[u] for u in range(1, 21)) / 0.5 == pytest.approx(0.75 / (0.75 + 0.10603616813), rel=1e-6)
    paid = [w[u] for u in range(1, 31)]
    assert all(a >= b for a, b in zip(paid, paid[1:], strict=False))  # never pays more for ranking lower
    assert w[26] == pytest.approx(w[25] / 2)  # geometric tail once below the cap


def test_slots_literal_shares_without_cap_conflict():
    # with a flat enough gather ramp the reserve tier keeps its 25 %
    s = slot_weights(WeightPolicy(gather_peers=2, reserve_peers=2, gather_tier_share=0.75, reserve_decay=0.5))
    assert s[:2] == pytest.approx([0.5, 0.25]) and s[2:] == pytest.approx([0.25 * 2 / 3, 0.25 / 3])


def test_few_miners_and_edge_cases():
    w = compute_weights({5: 2.0, 6: 1.0, 7: 0.0, 8: -1.0}, REF, burn_uid=0)
    assert set(w) == {0, 5, 6} and math.isclose(sum(w.values()), 1.0)
    assert w[5] / w[6] == pytest.approx(2.0 / (2.0 - 1 / 19))
    no_burn = compute_weights({5: 2.0, 6: 1.0}, REF, burn_uid=None)
    assert math.isclose(sum(no_burn.values()), 1.0) and set(no_burn) == {5, 6}
    assert compute_weights({5: 0.0}, REF, burn_uid=0) == {0: 1.0}
    assert compute_weights({}, REF, burn_uid=None) == {}
    assert set(compute_weights({0: 9.0, 4: 1.0}, REF, burn_uid=0)) == {0, 4}  # burn uid is no miner
    tie = compute_weights({9: 1.0, 2: 1.0}, REF, burn_uid=None)
    assert tie[2] > tie[9]


def good_record(**kw) -> MinerRecord:
    # one window of t = 3: Z = 3 > 2.33
    base = dict(uid=1, hotkey="h", first_window=0, loss_ema=0.01, evidence_sum=3.0, evidence_weight=1.0)
    base.update(sync=1.0, last_evaluated_window=10)
    base.update(kw)
    return MinerRecord(**base)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({}, None),
        ({"last_evaluated_window": None}, "not evaluated recently"),
        ({"last_evaluated_window": 7}, "not evaluated recently"),
        ({"sync": 0.2}, "out of sync"),
        ({"loss_ema": 0.0}, "no improvement on unseen data"),
        ({"evidence_weight": 0.0}, "not enough unique-data evidence yet"),
        ({"evidence_sum": 2.33}, "not enough unique-data evidence yet"),  # Z must exceed the threshold
        ({"evidence_sum": -3.0}, "not enough unique-data evidence yet"),
        ({"evidence_sum": 4.0, "evidence_weight": 2.0}, None),  # Z = 2.83
    ],
)
def test_payment_gate(change, reason):
    rec = good_record(**change)
    assert payment_gate(rec, 10, GatePolicy()) == reason
    assert (final_score(rec, 10, GatePolicy()) > 0) == (reason is None)


def test_final_score_orders_by_rating_times_sync():
    strong, weak = good_record(mu=40.0), good_record(mu=10.0)
    assert final_score(strong, 10, GatePolicy()) > final_score(weak, 10, GatePolicy()) > 0
    assert final_score(good_record(sync=0.6), 10, GatePolicy()) < final_score(good_record(), 10, GatePolicy())


def test_rank_strength_positive_and_increasing():
    values = [rank_strength(Rating(mu, 8.0), 7.0) for mu in (-50, 0, 24, 25, 60, 200)]
    assert all(v > 0 for v in values)
    assert values == sorted(values)
    assert rank_strength(Rating(200, 0.0), 7.0) == pytest.approx(200, rel=1e-6)

from __future__ import annotations

import pytest

from protocol.consensus import normalize_weights, stake_weighted_incentive


def test_normalize_drops_zeros_and_sums_to_one():
    assert normalize_weights({3: 2.0, 1: 0.0, 2: 6.0}) == {2: 0.75, 3: 0.25}
    assert normalize_weights({1: 0.0}) == {}


def test_honest_majority_decides_and_a_minority_cannot_lift_a_miner():
    stakes = {0: 60.0, 1: 30.0, 2: 10.0}
    honest = {10: 0.5, 11: 0.5}
    weights = {0: honest, 1: honest, 2: {12: 1.0}}  # the 10%-stake validator pays its own miner
    incentive = stake_weighted_incentive(stakes, weights)
    assert incentive == pytest.approx({10: 0.5, 11: 0.5})
    assert 12 not in incentive


def test_incentive_follows_stake_weighted_agreement():
    stakes = {0: 1.0, 1: 1.0}
    weights = {0: {10: 0.8, 11: 0.2}, 1: {10: 0.6, 11: 0.4}}
    incentive = stake_weighted_incentive(stakes, weights)
    assert sum(incentive.values()) == pytest.approx(1.0)
    assert incentive[10] > incentive[11] > 0


def test_unstaked_or_silent_validators_take_no_part():
    assert stake_weighted_incentive({0: 0.0}, {0: {1: 1.0}}) == {}
    assert stake_weighted_incentive({0: 5.0}, {}) == {}


def test_kappa_is_checked():
    with pytest.raises(ValueError):
        stake_weighted_incentive({0: 1.0}, {0: {1: 1.0}}, kappa=0.0)

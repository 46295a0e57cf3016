"""protocol.roles: a paid miner (stake, permit) stays a miner; only counted weights make a validator."""

from __future__ import annotations

import pytest

from protocol.chain import Metagraph, NeuronInfo
from protocol.hparams import load_hparams
from protocol.roles import excluded_reason, miner_uids, role_of, validator_uids

OWNER = 0


@pytest.fixture(scope="module")
def hp():
    base = load_hparams("tiny")
    return base.model_copy(update={"roles": base.roles.model_copy(update={"validator_min_stake": 10.0})})


def neuron(uid: int, stake: float = 0.0, permit: bool = False, weights: dict[int, float] | None = None) -> NeuronInfo:
    return NeuronInfo(uid, f"hk{uid}", f"ck{uid}", stake, permit, weights=weights or {})


def graph(*neurons: NeuronInfo) -> Metagraph:
    return Metagraph(netuid=1, block=5_000_000, neurons=tuple(neurons))


NETWORK = graph(
    neuron(0),  # the owner
    neuron(1, stake=1000.0, permit=True, weights={2: 0.5, 3: 0.5}),  # a validator
    neuron(2),  # a new miner
    neuron(3, stake=12.0, permit=True),  # a paid miner: its incentive staked, a permit next epoch
    neuron(4, stake=5000.0, permit=True, weights={4: 1.0}),  # a rich miner with only a self-weight
    neuron(5, stake=3.0, permit=True, weights={2: 1.0}),  # weights, too little stake
    neuron(6, stake=50.0, permit=False, weights={2: 1.0}),  # weights, no permit
)


def test_paid_miners_stay_miners_whatever_their_stake_or_permit(hp):
    assert miner_uids(NETWORK, hp, OWNER) == [2, 3, 4]
    assert validator_uids(NETWORK, hp) == [1]
    paid = role_of(NETWORK, 3, hp, OWNER)
    assert paid.role == "miner" and "sets no weights" in paid.reason


def test_verdicts_name_why(hp):
    assert role_of(NETWORK, 0, hp, OWNER).role == "none"
    assert "owner" in role_of(NETWORK, 0, hp, OWNER).reason
    v = role_of(NETWORK, 1, hp, OWNER)
    assert v.role == "validator" and "stake 1000 >= validator_min_stake 10" in v.reason
    low = role_of(NETWORK, 5, hp, OWNER)
    assert low.role == "none" and "stake 3 < validator_min_stake 10" in low.reason
    nopermit = role_of(NETWORK, 6, hp, OWNER)
    assert nopermit.role == "none" and "no validator permit" in nopermit.reason
    gone = role_of(NETWORK, 99, hp, OWNER)
    assert gone.role == "none" and "not registered at block 5000000" in gone.reason


def test_the_owner_may_validate_with_its_own_hotkey(hp):
    g = graph(neuron(0, stake=100.0, permit=True, weights={1: 1.0}), neuron(1))
    assert role_of(g, 0, hp, OWNER).role == "validator"
    assert miner_uids(g, hp, OWNER) == [1]
    assert miner_uids(graph(neuron(0), neuron(1)), hp, OWNER) == [1]


def test_a_node_outside_its_role_is_told_why(hp):
    assert excluded_reason(NETWORK, 3, hp, OWNER, "miner") is None
    assert excluded_reason(NETWORK, 1, hp, OWNER, "validator") is None
    assert "running as a miner, but uid 1 sets weights" in excluded_reason(NETWORK, 1, hp, OWNER, "miner")
    assert "validator_min_stake" in excluded_reason(NETWORK, 5, hp, OWNER, "validator")
    assert "no validator permit" in excluded_reason(NETWORK, 6, hp, OWNER, "validator")
    assert "not registered" in excluded_reason(NETWORK, None, hp, OWNER, "miner")
    assert "not registered" in excluded_reason(NETWORK, 99, hp, OWNER, "validator")


def test_a_validator_before_its_first_weights_is_not_excluded(hp):
    fresh = graph(neuron(0), neuron(1, stake=1000.0, permit=True), neuron(2, stake=2.0, permit=True))
    assert excluded_reason(fresh, 1, hp, OWNER, "validator") is None  # it will set weights
    assert "stake 2 < validator_min_stake 10" in excluded_reason(fresh, 2, hp, OWNER, "validator")

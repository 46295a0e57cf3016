"""The chain's rules, one scenario at a time, against both backends: the devchain and the bittensor
adapter on the real SDK over a fake substrate (``tests.protocol.fake_substrate``). What a node
does about a rule is the same whichever backend it talks to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

import neurons.node as node_loop
from neurons.weights_schedule import WeightsSchedule
from protocol.chain import (
    U16_MAX,
    Chain,
    ChainError,
    RateLimitedError,
    WeightsRefusedError,
)
from protocol.chain_bittensor import BittensorChain
from protocol.devchain import DevChain
from protocol.devchain_rules import DevChainRules
from protocol.hparams import load_hparams
from protocol.signing import HotkeySigner
from tests.protocol.fake_substrate import FakeSubstrate

NETUID = 7
OWNER, VALIDATOR, *MINERS = (HotkeySigner.from_uri(f"//{n}") for n in ("Alice", "Bob", "Charlie", "Dave", "Eve"))
VAL_UID = 1
BLOCKS_PER_WINDOW = 10
DEVCHAIN_BLOCK_TIME = 1.0


@dataclass
class Net:
    """One backend with the subnet's rules set: owner uid 0, validator uid 1, miners 2-4."""

    kind: str
    chain: Chain
    advance: Callable[[int], None]
    fake: FakeSubstrate | None = None
    devchain: DevChain | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)


@dataclass(frozen=True)
class Rules:
    rate_limit: int = 0
    min_allowed: int = 0
    max_limit: int = U16_MAX
    version_key: int = 0
    commit_reveal: bool = False
    commit_rate: int = 0


REVEAL_BLOCKS = 20  # devchain: a commit takes effect this many blocks later


def _devchain(tmp_path, rules: Rules) -> Net:
    dev_rules = DevChainRules(
        weights_rate_limit=rules.rate_limit, min_allowed_weights=rules.min_allowed, max_weights_limit=rules.max_limit,
        version_key=rules.version_key, commit_reveal_blocks=REVEAL_BLOCKS if rules.commit_reveal else 0,
        commit_rate_limit=rules.commit_rate,
    )
    genesis = time.time() - 1000 * DEVCHAIN_BLOCK_TIME  # head near block 1000, like the fake's
    chain = DevChain.create(tmp_path / "chain.db", NETUID, DEVCHAIN_BLOCK_TIME, genesis=genesis, rules=dev_rules)
    chain.wait_for_inclusion = False  # the test moves the clock itself

    def advance(blocks: int) -> None:
        # the devchain's blocks come from the wall clock: an earlier genesis is a later head
        shift = blocks * DEVCHAIN_BLOCK_TIME
        chain.genesis -= shift
        chain.slots.genesis -= shift

    for i, signer in enumerate((OWNER, VALIDATOR, *MINERS)):
        chain.register(signer, f"cold{i}", stake=1000.0 if signer is VALIDATOR else 0.0)
    advance(2)
    return Net("devchain", chain, advance, devchain=chain)


def _bittensor(monkeypatch, tmp_path, rules: Rules) -> Net:
    monkeypatch.setenv("BTCLI_TOKEN_SYMBOLS_CACHE", str(tmp_path / "symbols.json"))
    neurons = [
        {"hotkey": s.hotkey, "coldkey": f"5Cold{i}", "permit": s is VALIDATOR,
         "stake_rao": 1000 * 10**9 if s is VALIDATOR else 0, "incentive_u16": 0}
        for i, s in enumerate((OWNER, VALIDATOR, *MINERS))
    ]
    fake = FakeSubstrate(NETUID, neurons, head=1000)
    fake.rules.weights_rate_limit = rules.rate_limit
    fake.rules.min_allowed_weights = rules.min_allowed
    fake.rules.max_weights_limit = rules.max_limit
    fake.rules.weights_version_key = rules.version_key
    fake.commit_reveal = rules.commit_reveal
    fake.rules.commitment_rate_limit = rules.commit_rate
    chain = BittensorChain("finney", NETUID, substrate=fake)
    return Net("bittensor", chain, fake.advance, fake=fake, closers=[chain.close])


@pytest.fixture(params=["devchain", "bittensor"])
def make_net(request, tmp_path, monkeypatch):
    made: list[Net] = []

    def make(rules: Rules = Rules()) -> Net:
        net = _devchain(tmp_path, rules) if request.param == "devchain" else _bittensor(monkeypatch, tmp_path, rules)
        made.append(net)
        return net

    yield make
    for net in made:
        for close in net.closers:
            close()


def _schedule(net: Net, version_key: int = 0, every: int = 1) -> WeightsSchedule:
    return WeightsSchedule(net.chain, VALIDATOR, VAL_UID, version_key=version_key, windows_per_weights=every)


SCORES = {0: 0.5, 2: 0.25, 3: 0.15, 4: 0.10}


def test_windows_shorter_than_the_rate_limit_every_weight_set_is_accepted(make_net):
    net = make_net(Rules(rate_limit=100))
    schedule = _schedule(net)
    outcomes = []
    for w in range(32):  # 320 blocks of 10-block windows, weights wished for every window
        net.advance(BLOCKS_PER_WINDOW)
        outcomes.append(schedule.step(w, {**SCORES, 4: 0.10 + w / 1000}))
    statuses = {o.status for o in outcomes}
    assert statuses == {"set", "deferred"}, [o.note for o in outcomes if o.status not in ("set", "deferred")]
    sets = [o.block for o in outcomes if o.status == "set"]
    assert len(sets) >= 3 and all(b - a >= 100 for a, b in zip(sets, sets[1:], strict=False))
    assert all(o.retry_at is not None for o in outcomes if o.status == "deferred")
    # the newest window's weights are what went on chain, not the first deferred ones
    last_set = max(i for i, o in enumerate(outcomes) if o.status == "set")
    net.advance(1)
    row = net.chain.metagraph().by_uid(VAL_UID).weights
    assert row[4] / row[0] == pytest.approx((0.10 + last_set / 1000) / 0.5, rel=1e-3)


def test_a_second_set_inside_the_rate_limit_is_a_typed_refusal(make_net):
    net = make_net(Rules(rate_limit=100))
    net.chain.set_weights(VALIDATOR, SCORES)
    net.advance(5)
    with pytest.raises(RateLimitedError):
        net.chain.set_weights(VALIDATOR, SCORES)
    policy = net.chain.weights_policy(VAL_UID)
    assert policy.rate_limit == 100 and policy.next_allowed_block > policy.block
    net.advance(100)
    net.chain.set_weights(VALIDATOR, SCORES)


def test_version_key_older_than_the_subnets_is_refused_and_reported(make_net):
    net = make_net(Rules(version_key=5))
    with pytest.raises(WeightsRefusedError, match="IncorrectWeightVersionKey"):
        net.chain.set_weights(VALIDATOR, SCORES, version_key=3)
    outcome = _schedule(net, version_key=3).step(0, SCORES)
    assert outcome.status == "refused" and "weights_version_key" in outcome.note and "5" in outcome.note
    assert net.chain.weights_policy(VAL_UID).last_update is None  # nothing reached the chain
    assert _schedule(net, version_key=5).step(0, SCORES).status == "set"
    net.advance(1)  # a write takes effect in the next block
    assert net.chain.metagraph().by_uid(VAL_UID).weights


def test_burn_only_weights_meet_min_allowed_weights(make_net):
    net = make_net(Rules(min_allowed=3))
    with pytest.raises(WeightsRefusedError):
        net.chain.set_weights(VALIDATOR, {0: 1.0})  # all to the owner: one weight, three required
    outcome = _schedule(net).step(0, {0: 1.0})
    assert outcome.status == "set", outcome.note
    net.advance(1)
    row = net.chain.metagraph().by_uid(VAL_UID).weights
    assert len(row) == 3 and row[0] > 0.999  # the burn keeps all but one quantum per padding uid


def test_no_weight_exceeds_max_weights_limit(make_net):
    limit = int(U16_MAX * 0.4)
    net = make_net(Rules(max_limit=limit))
    assert _schedule(net).step(0, SCORES).status == "set"
    net.advance(1)
    row = net.chain.metagraph().by_uid(VAL_UID).weights
    assert max(row.values()) <= limit / U16_MAX + 1e-4 and set(row) == set(SCORES)
    assert row[2] > row[3] > row[4]  # the rest keep their order


def test_commit_reveal_commits_now_and_counts_the_rate_limit_from_the_commit(make_net):
    net = make_net(Rules(rate_limit=50, commit_reveal=True))
    outcome = _schedule(net).step(0, SCORES)
    assert outcome.status == "set" and "commit-reveal" in outcome.note
    net.advance(1)
    policy = net.chain.weights_policy(VAL_UID)
    assert policy.commit_reveal and policy.last_update is not None
    assert not net.chain.metagraph().by_uid(VAL_UID).weights  # hidden until revealed
    if net.fake is not None:
        (_, uid, reveal_round), = net.fake.timelocked_commits
        assert uid == VAL_UID and reveal_round > 0
        assert [c.function for c, _ in net.fake.submitted] == ["commit_timelocked_mechanism_weights"]
    else:
        net.advance(REVEAL_BLOCKS + 1)
        assert set(net.chain.metagraph().by_uid(VAL_UID).weights) == set(SCORES)
    net.advance(10)
    assert _schedule(net).step(1, SCORES).status == "deferred"


def test_reads_pinned_to_a_block_see_the_state_of_that_block(make_net):
    net = make_net()
    before = net.chain.block()
    net.chain.commit(MINERS[0], "bucket-one")
    net.chain.set_weights(VALIDATOR, SCORES)
    net.advance(2)
    after = net.chain.block()
    assert 2 not in net.chain.commitments(before) and net.chain.commitments(after)[2] == "bucket-one"
    assert not net.chain.metagraph(before).by_uid(VAL_UID).weights
    assert set(net.chain.metagraph(after).by_uid(VAL_UID).weights) == set(SCORES)


def _break_one_read(net: Net) -> tuple[int, Callable[[], None]]:
    """A block whose state this backend cannot read, and how to make it readable again: the SDK
    raises a plain ValueError for a runtime API missing at a block; the devchain refuses a block
    from before the subnet existed."""
    if net.fake is not None:
        net.fake.missing.add("SubnetInfoRuntimeApi.get_metagraph")
        return net.chain.block(), lambda: net.fake.missing.clear()
    return -1, lambda: None


def test_a_chain_read_that_fails_does_not_end_a_node(make_net, monkeypatch):
    net = make_net()
    monkeypatch.setattr(node_loop, "WINDOW_RETRY_SECONDS", 0.0)
    bad_block, repair = _break_one_read(net)
    calls: list[str] = []

    def one_window() -> None:
        block = bad_block if not calls else net.chain.block()
        try:
            net.chain.metagraph(block)
        except ChainError as exc:
            calls.append(f"failed: {exc}")
            repair()
            raise
        calls.append("ok")

    node = SimpleNamespace(
        stop=threading.Event(), name="v", window=0, chain=net.chain, uid=VAL_UID, hparams=load_hparams("tiny"),
        config=SimpleNamespace(max_windows=2, role="validator"),
    )
    assert node_loop.run_windows(node, one_window, ready=lambda: True) == 2
    assert calls[0].startswith("failed") and calls[1:] == ["ok", "ok"]


def test_a_commitment_too_soon_after_the_last_is_refused(make_net):
    net = make_net(Rules(commit_rate=20))
    net.chain.commit(MINERS[0], "first")
    net.advance(5)
    with pytest.raises(RateLimitedError):
        net.chain.commit(MINERS[0], "second")
    net.advance(20)
    net.chain.commit(MINERS[0], "third")
    net.advance(1)
    assert net.chain.commitments()[2] == "third"

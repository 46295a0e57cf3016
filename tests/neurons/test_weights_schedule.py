"""The weights schedule's own logic: the row it builds and what it does with a failed call.
Scenarios against both chain backends are in tests/protocol/test_chain_rules.py."""

from __future__ import annotations

import pytest

from neurons.weights_schedule import WeightsSchedule, cap_shares, conform
from protocol.chain import U16_MAX, ChainError, RateLimitedError, WeightsPolicy, WeightsRefusedError


def _policy(**kw) -> WeightsPolicy:
    base = dict(block=1000, rate_limit=0, last_update=None, min_allowed_weights=0, max_weight_share=1.0,
                version_key=0, commit_reveal=False, subnet_size=8)
    return WeightsPolicy(**{**base, **kw})


@pytest.mark.parametrize("share", [0.21, 0.26, 0.4, 0.5, 0.9])
def test_cap_shares_caps_the_largest_and_keeps_the_rest_in_proportion(share):
    row = {0: 10.0, 1: 5.0, 2: 1.0, 3: 1.0, 4: 0.5}
    out = cap_shares(row, share)
    assert sum(out.values()) == pytest.approx(1.0)
    assert max(out.values()) <= share + 1e-12
    uncapped = [u for u in out if out[u] < share - 1e-12]
    ratios = {out[u] / row[u] for u in uncapped}
    assert max(ratios) == pytest.approx(min(ratios))  # untouched entries only rescale together


def test_cap_shares_with_an_impossible_cap_is_uniform():
    assert cap_shares({0: 3.0, 1: 1.0}, 0.4) == {0: 0.5, 1: 0.5}


def test_burn_only_row_is_padded_with_one_quantum_on_other_uids():
    row = conform({0: 1.0}, _policy(min_allowed_weights=3), own_uid=1)
    assert set(row) == {0, 2, 3} and row[2] == row[3] == pytest.approx(1.0 / U16_MAX)
    assert round(row[2] / row[0] * U16_MAX) == 1  # survives the chain's u16 quantization
    # never more than the subnet has: min(MinAllowedWeights, subnet size)
    assert len(conform({0: 1.0}, _policy(min_allowed_weights=64, subnet_size=4), own_uid=1)) == 4


def test_a_lone_self_weight_is_exempt_and_zeros_are_dropped():
    assert conform({1: 2.0}, _policy(min_allowed_weights=5), own_uid=1) == {1: 2.0}
    assert conform({0: 1.0, 2: 0.0, 3: float("nan")}, _policy(), own_uid=1) == {0: 1.0}
    with pytest.raises(WeightsRefusedError):
        conform({0: 0.0}, _policy(), own_uid=1)


class FlakyChain:
    """Fails the first ``fail`` set_weights calls with ``error``; records what was sent."""

    def __init__(self, error: ChainError, fail: int = 1):
        self.error, self.fail, self.sent, self.head = error, fail, [], 1000

    def weights_policy(self, uid):
        return _policy(block=self.head)

    def set_weights(self, signer, weights, version_key=0):
        if self.fail:
            self.fail -= 1
            raise self.error
        self.sent.append((dict(weights), version_key))

    def block(self):
        return self.head + 1


@pytest.mark.parametrize("error", [ChainError("connection reset"), RateLimitedError("too fast", retry_at=1005)])
def test_a_failed_call_keeps_the_newest_weights_pending_and_retries(error, caplog):
    chain = FlakyChain(error)
    schedule = WeightsSchedule(chain, object(), 1, version_key=7, windows_per_weights=1)
    first = schedule.step(0, {0: 1.0, 2: 1.0})
    assert first.status in ("failed", "refused") and str(error) in first.note
    assert "set_weights" in caplog.text and "retrying" in caplog.text
    second = schedule.step(1, {0: 1.0, 3: 1.0})
    assert second.status == "set" and second.block == 1001
    assert chain.sent == [({0: 1.0, 3: 1.0}, 7)]
    assert schedule.step(2, {}).status == "idle"


def test_windows_per_weights_is_kept_when_the_chain_allows_more():
    chain = FlakyChain(ChainError("unused"), fail=0)
    schedule = WeightsSchedule(chain, object(), 1, version_key=0, windows_per_weights=3)
    statuses = [schedule.step(w, {0: 1.0}).status for w in range(6)]
    assert statuses == ["idle", "idle", "set", "idle", "idle", "set"]

import pytest

from storage.retry import RetryPolicy, call_with_retry


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


def _failing(times: int, exc: Exception, result: str = "ok"):
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise exc
        return result

    return fn, calls


def test_retries_transient_then_succeeds() -> None:
    slept: list[float] = []
    fn, calls = _failing(2, Flaky())
    policy = RetryPolicy(attempts=4, base_delay=0.1, max_delay=1.0)
    assert call_with_retry(fn, policy, (Flaky,), sleep=slept.append) == "ok"
    assert calls["n"] == 3 and len(slept) == 2
    assert all(0 <= d <= 0.1 * 2**i for i, d in enumerate(slept))


def test_gives_up_after_attempts_and_reraises_last() -> None:
    fn, calls = _failing(10, Flaky())
    with pytest.raises(Flaky):
        call_with_retry(fn, RetryPolicy(attempts=3, base_delay=0), (Flaky,), sleep=lambda _s: None)
    assert calls["n"] == 3


def test_permanent_failure_is_not_retried() -> None:
    fn, calls = _failing(10, Fatal())
    with pytest.raises(Fatal):
        call_with_retry(fn, RetryPolicy(attempts=5), (Flaky,), sleep=lambda _s: None)
    assert calls["n"] == 1


def test_predicate_filters_within_retry_types() -> None:
    fn, calls = _failing(10, Flaky("permanent"))
    with pytest.raises(Flaky):
        call_with_retry(
            fn, RetryPolicy(attempts=5), (Flaky,), lambda e: "transient" in str(e), lambda _s: None
        )
    assert calls["n"] == 1


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(attempts=10, base_delay=0.5, max_delay=2.0)
    assert policy.delay(0, rand=lambda: 1.0) == 0.5
    assert policy.delay(1, rand=lambda: 1.0) == 1.0
    assert policy.delay(5, rand=lambda: 1.0) == 2.0
    assert policy.delay(5, rand=lambda: 0.25) == 0.5


def test_policy_validates() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_delay=-1)

"""Bounded retries with exponential backoff and full jitter.

Only transient failures are retried (the caller says which); the last one is re-raised so the
backend can turn it into ``StorageUnavailable``. Sleeping and randomness are injectable so the
schedule is testable without waiting.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a transient failure.

    attempts: total tries including the first (1 = no retry).
    base_delay / max_delay: the backoff before retry n is uniform in [0, min(max, base * 2**n)]
    ("full jitter"), which spreads the retries of many validators hitting one bucket.
    """

    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must be >= 0")

    def delay(self, retry_index: int, rand: Callable[[], float] = random.random) -> float:
        """Backoff before retry number ``retry_index`` (0-based)."""
        cap = min(self.max_delay, self.base_delay * (2.0**retry_index))
        return cap * rand()


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    retry_on: tuple[type[Exception], ...],
    is_transient: Callable[[Exception], bool] = lambda _exc: True,
    sleep: Callable[[float], None] = time.sleep,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``fn`` until it succeeds, fails permanently, or ``policy.attempts`` are used up.

    Only exceptions of the ``retry_on`` types for which ``is_transient`` is true are retried;
    anything else propagates at once. After the last transient failure that exception propagates
    unchanged (the caller maps it to a typed error). ``deadline`` (a ``clock`` value) ends the
    retries early: no backoff sleeps past it, and a failure at or after it is the last one.
    """
    for attempt in range(policy.attempts):
        try:
            return fn()
        except retry_on as exc:
            if attempt + 1 >= policy.attempts or not is_transient(exc):
                raise
            delay = policy.delay(attempt)
            if deadline is not None:
                left = deadline - clock()
                if left <= 0:
                    raise
                delay = min(delay, left)
        sleep(delay)
    raise AssertionError("unreachable: the loop either returns or raises")

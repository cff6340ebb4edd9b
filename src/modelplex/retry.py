"""Backoff and retry policies: value objects that return a decision; callers only act on it.

`Backoff` is the one exponential backoff every retry loop uses: job retries,
pipeline step retries, webhook deliveries, a batch line's retries, a worker's
writes to a database that went away, and the supervisor's restarts of a worker
process. Whether a failure is worth retrying at all is a property of the error
class (`modelplex.error_map`), never of a code string.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """`base_s * 2**(n-1)` after the n-th failure, capped at `cap_s`.

    With `jitter` j (0..1) the delay is drawn uniformly from the top fraction j of
    that ceiling, so that many clients failing at once do not retry in step; 0
    gives exact, repeatable delays.
    """

    base_s: float
    cap_s: float
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("backoff needs base_s >= 0, cap_s >= 0 and 0 <= jitter <= 1")

    def ceiling(self, failures: int) -> float:
        # min() before the power: 2**n for a large n must not overflow a float.
        exponent = min(max(failures, 1) - 1, 64)
        return min(self.cap_s, self.base_s * 2.0**exponent)

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `failures`-th consecutive failure (1-based)."""
        ceiling = self.ceiling(failures)
        if not self.jitter:
            return ceiling
        return (rng or random).uniform(ceiling * (1 - self.jitter), ceiling)


@dataclass(frozen=True, slots=True)
class RetryDecision:
    retry: bool
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most `max_attempts` attempts of something that may fail transiently."""

    max_attempts: int
    backoff: Backoff

    def decide(
        self, attempt: int, retryable: bool, rng: random.Random | None = None
    ) -> RetryDecision:
        """After attempt number `attempt` (1-based) failed: again, and after how long?"""
        if not retryable or attempt >= self.max_attempts:
            return RetryDecision(retry=False)
        return RetryDecision(retry=True, delay_s=self.backoff.delay(attempt, rng))

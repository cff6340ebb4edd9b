"""Retry policies: objects that return a decision; the caller only persists it."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryDecision:
    retry: bool
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: after attempt n the delay is between half
    and all of min(cap, base * 2**(n-1)), so retries spread out but still back off."""

    max_attempts: int = 3
    base_s: float = 1.0
    cap_s: float = 300.0

    def decide(
        self, attempt: int, retryable: bool, rng: random.Random | None = None
    ) -> RetryDecision:
        """After attempt number `attempt` (1-based) failed: again, and when?"""
        if not retryable or attempt >= self.max_attempts:
            return RetryDecision(retry=False)
        ceiling = min(self.cap_s, self.base_s * 2 ** (attempt - 1))
        return RetryDecision(retry=True, delay_s=(rng or random).uniform(ceiling / 2, ceiling))

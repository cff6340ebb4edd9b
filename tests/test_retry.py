"""Backoff and retry policies: the one backoff every retry loop uses."""

from __future__ import annotations

import random

import pytest

from modelplex.retry import Backoff, RetryPolicy


def test_backoff_doubles_up_to_the_cap_without_jitter() -> None:
    backoff = Backoff(base_s=0.5, cap_s=3.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.delay(10_000) == 3.0  # no float overflow for a huge failure count


def test_backoff_jitter_stays_in_the_top_fraction_of_the_ceiling() -> None:
    backoff = Backoff(base_s=1.0, cap_s=100.0, jitter=0.5)
    rng = random.Random(3)
    for failures in range(1, 8):
        ceiling = min(100.0, 2.0 ** (failures - 1))
        for _ in range(50):
            assert ceiling / 2 <= backoff.delay(failures, rng) <= ceiling


@pytest.mark.parametrize(("base", "cap", "jitter"), [(-1.0, 1.0, 0.0), (1.0, -1.0, 0.0), (1, 1, 2)])
def test_backoff_refuses_nonsense(base: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base, cap, jitter)


def test_retry_policy_backs_off_with_jitter_and_stops() -> None:
    policy = RetryPolicy(max_attempts=4, backoff=Backoff(base_s=1.0, cap_s=3.0, jitter=0.5))
    rng = random.Random(7)
    delays = [policy.decide(n, retryable=True, rng=rng).delay_s for n in (1, 2, 3)]
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0
    assert 1.5 <= delays[2] <= 3.0  # capped
    assert not policy.decide(4, retryable=True).retry
    assert not policy.decide(1, retryable=False).retry

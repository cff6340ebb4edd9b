from __future__ import annotations

import time

import pytest

from modelplex.core.deadlines import Stop
from modelplex.errors import JobCancelled


def test_a_stop_without_deadline_or_cancel_lets_work_go_on() -> None:
    Stop().check()
    Stop(time.monotonic() + 60).check()


def test_a_passed_deadline_stops_work_as_asyncio_would() -> None:
    with pytest.raises(TimeoutError):
        Stop(time.monotonic() - 1).check()


def test_cancel_stops_work_with_its_reason_and_wins_over_the_deadline() -> None:
    stop = Stop(time.monotonic() - 1)
    stop.cancel("the client closed the connection")
    stop.cancel("a second reason is ignored")
    assert stop.cancelled
    with pytest.raises(JobCancelled, match="the client closed the connection"):
        stop.check()


def test_deadline_only_moves_forward() -> None:
    stop = Stop()
    assert stop.until(10.0) == 10.0
    assert stop.until(20.0) == 10.0
    assert stop.until(5.0) == 5.0

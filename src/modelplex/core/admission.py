"""Admission: rows promised a place in a batcher's queue before their pre-processing
starts, so a flood is refused up front instead of piling up in front of the queue."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from modelplex.core.queueing import BatchCost, Priority
from modelplex.errors import ResourceExhausted


@dataclass(frozen=True, slots=True)
class QueueBounds:
    """When a batcher's queue refuses more rows.

    Rows bound memory; the expected wait bounds latency (a thousand rows of a
    cheap model wait milliseconds, a hundred rows of an image model seconds).
    Jobs and batch chunks may fill only `low_priority_rows` (the rest stays free
    for synchronous requests) and are never refused for the wait: they have long
    deadlines and wait their turn.
    """

    max_rows: int
    low_priority_rows: int
    max_wait_s: float
    """0: no bound on the expected wait."""
    instances: int

    def refusal(
        self, name: str, waiting: int, rows: int, priority: Priority, cost: BatchCost
    ) -> ResourceExhausted | None:
        """Why `rows` more cannot queue behind `waiting`, or None when they can
        (an empty queue always takes a request, however large)."""
        if not waiting:
            return None
        limit = self.max_rows if priority is Priority.SYNC else self.low_priority_rows
        if waiting + rows > limit:
            return ResourceExhausted(
                f"model '{name}' has {waiting} rows waiting (limit {limit}); retry later"
            )
        if priority is not Priority.SYNC or not self.max_wait_s:
            return None
        wait = cost.expected_wait(waiting, self.instances)
        if wait <= self.max_wait_s:
            return None
        return ResourceExhausted(
            f"model '{name}' is busy: a new request would wait about {wait * 1000:.0f} ms "
            f"(limit {self.max_wait_s * 1000:.0f} ms); retry later",
            retry_after_s=max(1, math.ceil(wait)),
        )


class Admission:
    __slots__ = ("_unreserve", "active", "rows")

    def __init__(self, rows: int, unreserve: Callable[[int], None]) -> None:
        self.rows = rows
        self._unreserve = unreserve
        self.active = True

    def release(self) -> None:
        """Give the place back (once): the rows were queued, or will never be."""
        if self.active:
            self.active = False
            self._unreserve(self.rows)

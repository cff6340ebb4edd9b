"""Admission: rows promised a place in a batcher's queue before their pre-processing
starts, so a flood is refused up front instead of piling up in front of the queue."""

from __future__ import annotations

from collections.abc import Callable


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

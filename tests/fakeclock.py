"""A clock tests move by hand, so leases expire and retries fall due without sleeping."""

from __future__ import annotations


class FakeClock:
    """Epoch seconds (a `modelplex.records.Clock`) that change only on `advance`."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.now += seconds

"""When a request's work must stop: its deadline passed, or its caller went away.

asyncio's timeouts and task cancellation stop the coroutine that waits for a
result, not the pre-processing thread that computes it: that thread would go
on decoding images for nobody, and every request behind it would wait. A
`Stop` is the one signal both sides read. The data plane sets its deadline; a
protocol adapter that notices its caller leave (an HTTP disconnect, a
cancelled RPC) calls `cancel`; long work off the event loop calls `check`
between its units (one image), and stops at the next one.

Plain attribute reads and writes, so any thread may check while the event loop
cancels: the worst case is one more unit of work.
"""

from __future__ import annotations

import time

from modelplex.errors import JobCancelled


class Stop:
    __slots__ = ("deadline", "reason")

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        """`time.monotonic()` after which the work is for nobody; None for none."""
        self.reason: str | None = None
        """Why the caller stopped waiting, once it has."""

    @property
    def cancelled(self) -> bool:
        return self.reason is not None

    def cancel(self, reason: str) -> None:
        """The caller is gone: work checked against this stop ends at its next `check`."""
        if self.reason is None:
            self.reason = reason

    def until(self, deadline: float) -> float:
        """Bring the deadline forward to `deadline` (never back); the deadline now."""
        if self.deadline is None or deadline < self.deadline:
            self.deadline = deadline
        return self.deadline

    def check(self) -> None:
        """Raise if the work should stop: JobCancelled (CANCELLED) once cancelled;
        TimeoutError once the deadline has passed, as asyncio's own timeouts do, so
        the data plane words every missed deadline in one place."""
        if self.reason is not None:
            raise JobCancelled(self.reason)
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TimeoutError

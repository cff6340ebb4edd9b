"""A batcher's queue (pending rows at priority levels, taken highest level first)
and its cost estimate.

Synchronous requests (a client holds a connection open) come before job
inference, which comes before batch-file chunks, as Triton's priority levels
do: a batch of 100,000 lines queued behind the model never delays a
synchronous request by more than the model call already running.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum

from modelplex.core.tensors import Array
from modelplex.errors import InferenceFailed


class Priority(IntEnum):
    """Lower runs first."""

    SYNC = 0
    """A client waits on the connection (/v1, /v2, gRPC)."""
    JOB = 1
    """A queued job: a model job or a pipeline step."""
    BATCH = 2
    """A chunk of a batch file."""


LOW_PRIORITY_SHARE = 0.5
"""Share of a version's queue that job and batch rows may fill: the rest is
always left to synchronous requests."""


INLINE_MAX_S = 0.0005
"""A batch expected to take less than this runs on the event loop itself: for a
model this cheap, the hop to an inference thread and back (and the GIL
hand-offs it causes) costs more than the call."""
_COST_WEIGHT = 0.2
"""Weight of the newest batch in the running averages of `BatchCost`."""


class BatchCost:
    """Running averages of a version's batch time and rows."""

    def __init__(self) -> None:
        self.seconds: float | None = None
        self.rows = 1.0

    def record(self, rows: int, elapsed: float) -> None:
        if self.seconds is None:
            self.seconds, self.rows = elapsed, float(rows)
        else:
            self.seconds += _COST_WEIGHT * (elapsed - self.seconds)
            self.rows += _COST_WEIGHT * (rows - self.rows)

    def expected_wait(self, rows_ahead: int, instances: int) -> float:
        """Seconds until `rows_ahead` queued rows have run, if batches keep their
        recent size and time (0 before one has been measured)."""
        if self.seconds is None:
            return 0.0
        return rows_ahead / max(self.rows, 1.0) * self.seconds / max(instances, 1)

    def cheap(self, rows: int) -> bool:
        """Whether a batch of `rows` is expected to cost less than a thread hop
        (never before one has been measured, on a thread)."""
        if self.seconds is None:
            return False
        return self.seconds * max(1.0, rows / self.rows) < INLINE_MAX_S


@dataclass(slots=True)
class BatchOutcome:
    outputs: dict[str, Array]
    queue_wait_s: float
    inference_s: float
    batch_size: int


@dataclass(slots=True, eq=False)
class Pending:
    inputs: dict[str, Array]
    rows: int
    future: asyncio.Future[BatchOutcome]
    deadline: float | None
    enqueued: float = field(default=0.0)
    priority: Priority = Priority.SYNC
    counted: bool = True
    """Whether `rows` still count against the queue bound."""


class PendingQueue:
    """One FIFO per priority level."""

    def __init__(self) -> None:
        self._levels: tuple[deque[Pending], ...] = tuple(deque() for _ in Priority)

    def __bool__(self) -> bool:
        return any(self._levels)

    def __iter__(self) -> Iterator[Pending]:
        for level in self._levels:
            yield from level

    def extend(self, items: list[Pending]) -> None:
        for item in items:
            self._levels[item.priority].append(item)

    def oldest_enqueued(self) -> float:
        return min(level[0].enqueued for level in self._levels if level)

    def take(
        self,
        max_rows: int,
        now: float,
        pop: Callable[[Pending], None],
        expired: Callable[[Pending], None],
    ) -> list[Pending]:
        """Up to `max_rows` live rows, highest level first, in arrival order within a
        level. Only rows with the same per-instance shapes can share a batch
        (inputs with -1 dimensions vary), so the batch ends at the first request
        that does not fit. `pop` is told of every row leaving the queue; `expired`
        of those dropped because the caller gave up or the deadline passed."""
        batch: list[Pending] = []
        rows = 0
        shapes: list[tuple[int, ...]] | None = None
        for level in self._levels:
            while level:
                item = level[0]
                if item.future.done() or (item.deadline is not None and item.deadline <= now):
                    level.popleft()
                    pop(item)
                    expired(item)
                    continue
                item_shapes = [v.shape[1:] for v in item.inputs.values()]
                if batch and (rows + item.rows > max_rows or item_shapes != shapes):
                    return batch
                shapes = item_shapes
                level.popleft()
                pop(item)
                batch.append(item)
                rows += item.rows
        return batch

    def drain(self) -> list[Pending]:
        """Everything queued, removed."""
        items = list(self)
        for level in self._levels:
            level.clear()
        return items


def check_outputs(model: str, names: Iterable[str], outputs: dict[str, Array], rows: int) -> None:
    """A batch's outputs: every declared one, one row per input row."""
    for name in names:
        tensor = outputs.get(name)
        if tensor is None:
            raise InferenceFailed(f"model '{model}' did not return output '{name}'")
        if len(tensor) != rows:
            raise InferenceFailed(
                f"model '{model}' returned {len(tensor)} rows of '{name}' for {rows} inputs"
            )

"""What a running job shares with its worker, and the outcomes a run ends in.

The runner reports progress and step events into the job's `JobControl`; the
worker flushes them to the store a few times a second (so a job that takes
milliseconds writes nothing until it ends) and sets `cancel` when a cancel
request or the loss of the lease reaches it.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from dataclasses import dataclass, field, replace
from typing import Any

from modelplex.jobs import events as job_events
from modelplex.records import Job, JobError, NewDelivery, StepStatus

_STEP_ENDS = frozenset(
    {StepStatus.COMPLETED.value, StepStatus.FAILED.value, StepStatus.CANCELLED.value}
)


@dataclass(slots=True)
class Completed:
    result: Any
    lines: tuple[int, int] | None = None
    """For batch chunks: (completed, failed) lines."""


@dataclass(slots=True)
class Failed:
    error: JobError
    lines: tuple[int, int] | None = None


@dataclass(slots=True)
class Cancelled:
    lines: tuple[int, int] | None = None
    result: Any = None
    """For batch chunks: the lines that ran before the cancel reached them."""


Outcome = Completed | Failed | Cancelled


class StepFailure(Exception):
    """A step (or a model job's inference) failed; carries the job's error."""

    def __init__(self, error: JobError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(eq=False)
class JobControl:
    """Cancellation and progress of one running job."""

    job: Job
    steps: list[dict[str, Any]] = field(default_factory=list)
    progress: float = 0.0
    dirty: bool = False
    events: list[NewDelivery] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set by the worker; sync steps poll it from their threads."""
    lost: bool = False
    """Set when the heartbeat found the lease gone: the job's work is moot."""
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held by a progress flush while it writes; the final write waits for it, so
    that a flush never lands after the job's end (its events would be lost)."""
    finishing: bool = False
    """Set once the final write takes the remaining events: no flush after it."""

    def __post_init__(self) -> None:
        self.steps = copy.deepcopy(self.job.steps)

    def update_step(self, index: int, **fields: Any) -> None:
        self.steps[index].update(fields)
        done = sum(
            1.0 if s["status"] == StepStatus.COMPLETED else float(s.get("progress") or 0)
            for s in self.steps
        )
        self.progress = round(done / max(1, len(self.steps)), 4)
        self.dirty = True
        if "started_at" in fields or fields.get("status") in _STEP_ENDS:
            self._step_event(index)

    def _step_event(self, index: int) -> None:
        job = self.job
        if job_events.STEP in job.callback_events:
            now = replace(job, steps=copy.deepcopy(self.steps), progress=self.progress)
            self.events += job_events.job_event(job_events.STEP, now, step=index)

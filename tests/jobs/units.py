"""Real parts for the job layer's in-process tests (not a conftest: import from it).

A small repository in a temporary folder (python models written by
`tests.helpers`, pipelines as pipeline.toml + steps.py), the model registry,
data plane, pipeline registry and job runner loaded from it, a `MemoryStore`
on a `FakeClock` and a `LocalBlobStore`. Steps that must hold still while a
test acts block on a `threading.Event` the test opens (`Parts.gate`): the
steps.py below runs in this process and finds the events in `GATES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelplex.core.dataplane import DataPlane
from modelplex.core.registry import ModelRegistry
from modelplex.jobs.pipelines import PipelineRegistry
from modelplex.jobs.runner import JobRunner
from modelplex.jobs.service import JobService
from modelplex.jobs.worker import Worker, WorkerConfig
from modelplex.records import Job, JobKind, JobStatus, NewJob
from modelplex.settings import Settings
from modelplex.storage.blobs import LocalBlobStore
from modelplex.storage.memory import MemoryStore
from tests.fakeclock import FakeClock
from tests.helpers import write_python_model

WAIT_S = 5.0
"""The longest any condition is waited for."""

GATES: dict[str, threading.Event] = {}
"""Gate name -> the event a `hold` step waits on (steps get the name in their data)."""


@dataclass
class Copies:
    """How many copies of a step run at once, and at most ever (`overrun` steps)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    running: int = 0
    most: int = 0
    started: int = 0
    left_at: float = 0.0
    """When a copy last ended (epoch seconds, as steps' `started_at`)."""

    def enter(self) -> None:
        with self.lock:
            self.running += 1
            self.started += 1
            self.most = max(self.most, self.running)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1
            self.left_at = time.time()


COPIES: dict[str, Copies] = {}
"""Key in an `overrun` step's data -> its copies."""

STEPS_PY = '''
import asyncio
import time
from pathlib import Path

import numpy as np

from modelplex.jobs.pipelines import StepError
from tests.jobs.units import COPIES, GATES, WAIT_S


def _count(data):
    """Runs of this step so far, this one included (in the marker file)."""
    marker = Path(data["marker"])
    runs = (int(marker.read_text()) if marker.exists() else 0) + 1
    marker.write_text(str(runs))
    return runs


def _trail(ctx, data):
    if "marker" in data:
        _count(data)
    return {**data, "trail": [*data.get("trail", []), ctx.step]}


def mark(ctx, data):
    return _trail(ctx, data)


async def amark(ctx, data):
    return _trail(ctx, data)


def hold(ctx, data):
    """Half done, then waits for its gate (if it has one); ignores cancellation."""
    ctx.progress(0.5)
    if "gate" in data and not GATES[data["gate"]].wait(WAIT_S * 2):
        raise RuntimeError("the test never opened the gate")
    return _trail(ctx, data)


def hold_cancellable(ctx, data):
    """Waits for its gate, checking for cancellation meanwhile."""
    ctx.progress(0.5)
    for _ in range(int(WAIT_S * 200)):
        if GATES[data["gate"]].wait(0.005):
            return _trail(ctx, data)
        ctx.check_cancelled()
    raise RuntimeError("the test never opened the gate")


def refuse(ctx, data):
    raise StepError("INPUT_DECODE_FAILED", "'photo.jpg' is not an image")


def boom(ctx, data):
    _count(data)
    raise RuntimeError("secret internal detail: /srv/credentials")


def overrun(ctx, data):
    """Works far past its timeout in small slices, stopping only when told to."""
    copies = COPIES[data["copies"]]
    copies.enter()
    try:
        for _ in range(int(WAIT_S * 200)):
            ctx.check_cancelled()
            time.sleep(0.005)
        return data
    finally:
        copies.leave()


def stubborn(ctx, data):
    """Ignores every signal: runs until its gate opens."""
    copies = COPIES[data["copies"]]
    copies.enter()
    try:
        GATES[data["gate"]].wait(WAIT_S * 2)
        return data
    finally:
        copies.leave()


async def stall(ctx, data):
    await asyncio.sleep(60)
    return data


def to_pixels(ctx, data):
    return {"x": np.asarray(data["rows"], dtype=np.float32)}


def render(ctx, data):
    return {"y": data["doubled"]["y"].tolist()}
'''

PIPELINES = {
    "two-steps": """
        description = "Two steps, one sync, one async"
        [[steps]]
        name = "one"
        function = "hold"
        [[steps]]
        name = "two"
        function = "amark"
    """,
    "cancellable": """
        [[steps]]
        name = "wait"
        function = "hold_cancellable"
        [[steps]]
        name = "after"
        function = "mark"
    """,
    "refuses": """
        [[steps]]
        name = "refuse"
        function = "refuse"
    """,
    "boom": """
        [[steps]]
        name = "boom"
        function = "boom"
    """,
    "boom-retried": """
        [[steps]]
        name = "boom"
        function = "boom"
        retry = { max_attempts = 2, backoff_s = 0 }
    """,
    "stalls": """
        [[steps]]
        name = "stall"
        function = "stall"
        timeout_s = 0.05
    """,
    "overruns": """
        [[steps]]
        name = "overrun"
        function = "overrun"
        timeout_s = 0.05
        retry = { max_attempts = 3, backoff_s = 0 }
    """,
    "overruns-once": """
        [[steps]]
        name = "overrun"
        function = "overrun"
        timeout_s = 0.05
    """,
    "stuck": """
        [[steps]]
        name = "stubborn"
        function = "stubborn"
        timeout_s = 0.05
        retry = { max_attempts = 3, backoff_s = 0 }
    """,
    "slow-model": """
        [[steps]]
        name = "prepare"
        function = "to_pixels"
        [[steps]]
        name = "double"
        model = "sleepy"
        timeout_s = 0.05
    """,
    "model-step": """
        [[steps]]
        name = "prepare"
        function = "to_pixels"
        [[steps]]
        name = "double"
        model = "doubler"
        output = "doubled"
        batch_size = 2
        [[steps]]
        name = "render"
        function = "render"
    """,
}


def write_pipeline(repo: Path, name: str, toml: str, steps: str | None = STEPS_PY) -> Path:
    folder = repo / name
    folder.mkdir(parents=True)
    (folder / "pipeline.toml").write_text(textwrap.dedent(toml))
    if steps is not None:
        (folder / "steps.py").write_text(textwrap.dedent(steps))
    return folder


def build_repo(repo: Path) -> Path:
    write_python_model(repo, "doubler", batching="[batching]\nmax_batch_size = 8\n")
    write_python_model(repo, "sleepy", delay_ms=500)
    for name, toml in PIPELINES.items():
        write_pipeline(repo, name, toml)
    return repo


@dataclass
class Parts:
    tmp: Path
    settings: Settings
    registry: ModelRegistry
    dataplane: DataPlane
    pipelines: PipelineRegistry
    blobs: LocalBlobStore
    runner: JobRunner
    clock: FakeClock
    store: MemoryStore
    gates: list[str] = field(default_factory=list)

    def service(self) -> JobService:
        return JobService(self.store, self.blobs, self.dataplane, self.pipelines, self.settings)

    def gate(self) -> tuple[str, threading.Event]:
        """A closed gate for a `hold` step (opened for good when the parts close)."""
        name = f"{self.tmp.name}-{len(self.gates)}"
        GATES[name] = threading.Event()
        self.gates.append(name)
        return name, GATES[name]

    def copies(self) -> tuple[str, Copies]:
        """A counter of an `overrun` or `stubborn` step's copies."""
        name = f"{self.tmp.name}-{len(COPIES)}"
        COPIES[name] = Copies()
        return name, COPIES[name]

    def marker(self, name: str = "runs") -> Path:
        return self.tmp / f"{name}.count"

    async def create(
        self,
        kind: JobKind,
        target: str,
        input: Any,
        *,
        version: str | None = None,
        max_attempts: int = 3,
        callback_url: str | None = None,
        callback_events: list[str] | None = None,
    ) -> Job:
        """A QUEUED job as the store keeps it (its steps: the pipeline's, or one)."""
        if kind is JobKind.PIPELINE:
            steps = self.pipelines.get(target).step_names
        else:
            steps = ["inference" if kind is JobKind.MODEL else "chunk"]
        new = NewJob(
            kind=kind,
            target=target,
            version=version,
            max_attempts=max_attempts,
            steps=steps,
            input=input,
            callback_url=callback_url,
            callback_events=callback_events or [],
        )
        return await self.store.create(new)

    async def claim(self, job_id: str, worker: str = "w-test") -> Job:
        claimed = await self.store.claim(worker, 10, 60.0)
        assert [j.id for j in claimed] == [job_id]
        return claimed[0]

    async def get(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        assert job is not None
        return job

    def worker(self, config: WorkerConfig, name: str = "w-a") -> Worker:
        return Worker(self.store, self.runner, self.blobs, config, name=name, clock=self.clock)


class CountingStore(MemoryStore):
    """A MemoryStore that counts claims, so a test can wait for a worker's polls."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.claims = 0

    async def claim(self, worker: str, limit: int, lease_s: float) -> list[Job]:
        self.claims += 1
        return await super().claim(worker, limit, lease_s)


@contextlib.asynccontextmanager
async def open_parts(tmp: Path) -> AsyncIterator[Parts]:
    repo = build_repo(tmp / "repo")
    settings = Settings(
        data_dir=tmp / "data", cache_dir=tmp / "cache", webhook_allow_private=True, workers=0
    )
    registry = ModelRegistry(repo, settings)
    dataplane = DataPlane(registry, settings)
    pipelines = PipelineRegistry(repo)
    await asyncio.to_thread(registry.load_all)
    await asyncio.to_thread(pipelines.load_all)
    blobs = LocalBlobStore(tmp / "blobs")
    clock = FakeClock()
    parts = Parts(
        tmp=tmp,
        settings=settings,
        registry=registry,
        dataplane=dataplane,
        pipelines=pipelines,
        blobs=blobs,
        runner=JobRunner(dataplane, pipelines, blobs),
        clock=clock,
        store=CountingStore(clock),
    )
    try:
        yield parts
    finally:
        for name in parts.gates:  # no step thread outlives the test
            GATES.pop(name).set()
        await registry.close()
        dataplane.close()
        await parts.store.close()


async def eventually(check: Callable[[], Any], timeout_s: float = WAIT_S) -> Any:
    """Poll `check()` (sync or async) until it is truthy; return it, or fail after
    `timeout_s`. A bounded wait for a condition, never a pause standing in for one."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s (last: {value!r})")
        await asyncio.sleep(0.005)


async def job_reaches(
    store: MemoryStore, job_id: str, *statuses: JobStatus, timeout_s: float = WAIT_S
) -> Job:
    async def reached() -> Job | None:
        job = await store.get(job_id)
        return job if job is not None and job.status in statuses else None

    found: Job = await eventually(reached, timeout_s)
    return found


async def wait_task(task: Awaitable[Any], timeout_s: float = WAIT_S * 2) -> Any:
    return await asyncio.wait_for(task, timeout_s)

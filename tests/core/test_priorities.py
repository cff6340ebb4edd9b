"""Batcher priorities (sync before jobs before batch chunks) and inline execution.

Deterministic: the model's first call is held until the rows under test are
queued behind it, so the next calls show the order the batcher chose.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from modelplex.core import queueing
from modelplex.core.batching import Batcher
from modelplex.core.queueing import Priority
from modelplex.core.stats import ModelStats
from modelplex.errors import InferenceFailed, ResourceExhausted
from tests.core.test_batching import busy, rows, settle


class Values:
    """Doubles x; remembers each call's values and thread; blocks while `release` is clear."""

    def __init__(self) -> None:
        self.calls: list[list[float]] = []
        self.threads: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        self.entered.set()
        self.release.wait(5)
        self.calls.append([float(v) for v in inputs["x"].reshape(-1)])
        self.threads.append(threading.get_ident())
        return {"y": inputs["x"] * 2}


def make(model: Values, **kwargs: Any) -> tuple[Batcher, ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(1)
    options: dict[str, Any] = {"max_batch_size": 2, "max_batch_delay_s": 0, "max_queue_rows": 8}
    options.update(kwargs)
    batcher = Batcher("m:1", model, executor, output_names=["y"], stats=ModelStats(), **options)
    return batcher, executor


async def one(batcher: Batcher, value: float, priority: Priority) -> float:
    outcome = await batcher.submit(rows(value), 1, None, priority=priority)
    return float(outcome.outputs["y"][0, 0])


def test_sync_rows_run_before_queued_job_and_batch_rows() -> None:
    model = Values()
    batcher, executor = make(model)

    async def main() -> None:
        model.release.clear()
        first = asyncio.create_task(one(batcher, 1, Priority.SYNC))
        await busy(model)  # held: everything below queues behind it
        chunks = [asyncio.create_task(one(batcher, v, Priority.BATCH)) for v in (10, 11)]
        await settle(lambda: batcher.queued_rows == 2)
        job = asyncio.create_task(one(batcher, 30, Priority.JOB))
        await settle(lambda: batcher.queued_rows == 3)
        sync = asyncio.create_task(one(batcher, 20, Priority.SYNC))
        await settle(lambda: batcher.queued_rows == 4)
        model.release.set()
        results = await asyncio.gather(first, *chunks, job, sync)
        assert results == [2, 20, 22, 60, 40]  # each caller its own rows

    asyncio.run(main())
    executor.shutdown()
    # The sync request arrived last but ran first; then the job; batch rows last.
    assert model.calls == [[1], [20, 30], [10, 11]]


def test_jobs_and_batch_chunks_leave_half_the_queue_to_sync_requests() -> None:
    batcher, executor = make(Values(), max_queue_rows=8)
    low = [batcher.admit(2, Priority.BATCH), batcher.admit(2, Priority.JOB)]
    with pytest.raises(ResourceExhausted, match="limit 4"):
        batcher.admit(1, Priority.BATCH)
    sync = batcher.admit(4, Priority.SYNC)  # the other half is still free
    with pytest.raises(ResourceExhausted, match="limit 8"):
        batcher.admit(1, Priority.SYNC)
    for admission in (*low, sync):
        admission.release()
    executor.shutdown()


def test_a_worker_lets_jobs_fill_the_whole_queue() -> None:
    batcher, executor = make(Values(), max_queue_rows=8, low_priority_share=1.0)
    admission = batcher.admit(8, Priority.BATCH)
    admission.release()
    executor.shutdown()


def test_cheap_library_models_run_on_the_event_loop_after_one_measured_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What counts as cheap is raised so that a busy test machine cannot decide it.
    monkeypatch.setattr(queueing, "INLINE_MAX_S", 60.0)
    model = Values()
    batcher, executor = make(model, inline=True)

    async def main() -> None:
        for value in (1, 2, 3):
            assert await one(batcher, value, Priority.SYNC) == 2 * value

    asyncio.run(main())
    executor.shutdown()
    loop_thread = threading.get_ident()
    assert model.threads[0] != loop_thread  # measured on an inference thread first
    assert model.threads[1:] == [loop_thread, loop_thread]


def test_models_that_may_block_never_run_on_the_event_loop() -> None:
    model = Values()
    batcher, executor = make(model, inline=False)

    async def main() -> None:
        for value in (1, 2, 3):
            await one(batcher, value, Priority.SYNC)

    asyncio.run(main())
    executor.shutdown()
    assert threading.get_ident() not in model.threads


def test_a_failing_inline_batch_fails_its_members(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queueing, "INLINE_MAX_S", 60.0)
    calls = 0

    def flaky(inputs: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("boom")
        return {"y": np.asarray(inputs["x"]) * 2}

    executor = ThreadPoolExecutor(1)
    batcher = Batcher(
        "m:1", flaky, executor, output_names=["y"], stats=ModelStats(),
        max_batch_size=2, max_batch_delay_s=0, max_queue_rows=8, inline=True,
    )  # fmt: skip

    async def main() -> None:
        assert await one(batcher, 1, Priority.SYNC) == 2
        with pytest.raises(InferenceFailed, match="failed on a batch"):
            await one(batcher, 2, Priority.SYNC)
        with pytest.raises(InferenceFailed, match="failed on a batch"):
            await one(batcher, 3, Priority.SYNC)  # the batcher keeps serving

    asyncio.run(main())
    executor.shutdown()

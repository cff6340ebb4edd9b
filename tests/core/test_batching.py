"""The Batcher on its own, with plain functions as models.

Ordering is made deterministic with events, never with sleeps: a model call
signals when it has started (and blocks until released), and `settle` lets the
event loop run until a condition holds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from modelplex.core.batching import Batcher
from modelplex.core.stats import ModelStats
from modelplex.errors import InferenceFailed, InferenceTimeout, ModelNotReady, ResourceExhausted


class Recorder:
    """Doubles x, remembers each call's batch size, optionally blocks until released."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.fail = fail

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        self.entered.set()
        self.release.wait(5)
        self.calls.append(len(inputs["x"]))
        if self.fail:
            raise RuntimeError("boom")
        return {"y": inputs["x"] * 2}


def make(model: Recorder, **kwargs: Any) -> tuple[Batcher, ModelStats, ThreadPoolExecutor]:
    stats = ModelStats()
    executor = ThreadPoolExecutor(1)
    options: dict[str, Any] = {"max_batch_size": 8, "max_batch_delay_s": 0.02, "max_queue_rows": 64}
    options.update(kwargs)
    return (
        Batcher("m:1", model, executor, output_names=["y"], stats=stats, **options),
        stats,
        executor,
    )


async def busy(model: Recorder) -> None:
    """Wait until the model is inside a call (which blocks while `release` is clear)."""
    assert await asyncio.to_thread(model.entered.wait, 5), "the model was never called"


async def settle(condition: Callable[[], bool]) -> None:
    """Let the event loop run until `condition` holds (bounded)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def rows(*values: float) -> dict[str, Any]:
    return {"x": np.array([[v] for v in values], dtype=np.float32)}


async def submit(batcher: Batcher, *values: float, deadline: float | None = None) -> list[float]:
    outcome = await batcher.submit(rows(*values), len(values), deadline)
    return [float(v) for v in outcome.outputs["y"].reshape(-1)]


def test_concurrent_requests_are_merged_and_split_back() -> None:
    model = Recorder()
    batcher, stats, executor = make(model)

    async def main() -> list[list[float]]:
        return await asyncio.gather(*(submit(batcher, i, 10 + i) for i in range(4)))

    results = asyncio.run(main())
    assert results == [[2.0 * i, 2.0 * (10 + i)] for i in range(4)]
    assert sum(model.calls) == 8
    assert len(model.calls) < 4
    assert stats.execution_count == len(model.calls)
    executor.shutdown()


def test_requests_arriving_while_busy_form_the_next_batch() -> None:
    model = Recorder()
    batcher, _, executor = make(model, max_batch_delay_s=0)

    async def main() -> list[list[float]]:
        model.release.clear()
        first = asyncio.create_task(submit(batcher, 1))
        await busy(model)  # the first batch is now running, blocked
        others = [asyncio.create_task(submit(batcher, v)) for v in (2, 3, 4)]
        await settle(lambda: batcher.queued_rows == 3)
        model.release.set()
        return [await first, *[await t for t in others]]

    assert asyncio.run(main()) == [[2.0], [4.0], [6.0], [8.0]]
    assert model.calls == [1, 3]
    executor.shutdown()


def test_large_request_is_chunked_to_max_batch_size() -> None:
    model = Recorder()
    batcher, _, executor = make(model, max_batch_size=4)
    values = [float(v) for v in range(10)]
    assert asyncio.run(submit(batcher, *values)) == [2 * v for v in values]
    assert model.calls == [4, 4, 2]
    executor.shutdown()


def test_queue_bound_sheds_load() -> None:
    model = Recorder()
    batcher, stats, executor = make(model, max_batch_size=1, max_queue_rows=2, max_batch_delay_s=0)

    async def main() -> list[object]:
        model.release.clear()
        running = asyncio.create_task(submit(batcher, 0))
        await busy(model)
        queued = [asyncio.create_task(submit(batcher, v)) for v in (1, 2)]
        await settle(lambda: batcher.queued_rows == 2)
        with pytest.raises(ResourceExhausted):
            await submit(batcher, 3)
        model.release.set()
        return [await running, *[await q for q in queued]]

    assert asyncio.run(main()) == [[0.0], [2.0], [4.0]]
    assert stats.rejected_overload == 1
    executor.shutdown()


def test_expired_request_is_dropped_not_run() -> None:
    model = Recorder()
    batcher, stats, executor = make(model, max_batch_delay_s=0)

    async def main() -> None:
        model.release.clear()
        running = asyncio.create_task(submit(batcher, 1))
        await busy(model)
        # Its deadline has passed by the time the busy model frees up.
        expiring = asyncio.create_task(submit(batcher, 2, deadline=time.monotonic() - 1))
        await settle(lambda: batcher.queued_rows == 1)
        model.release.set()
        assert await running == [2.0]
        with pytest.raises(InferenceTimeout):
            await expiring

    asyncio.run(main())
    assert model.calls == [1]
    assert stats.dropped_expired == 1
    executor.shutdown()


def test_failed_batch_fails_every_member() -> None:
    model = Recorder(fail=True)
    batcher, stats, executor = make(model)

    async def main() -> list[BaseException | list[float]]:
        return await asyncio.gather(
            *(submit(batcher, v) for v in (1, 2, 3)), return_exceptions=True
        )

    results = asyncio.run(main())
    assert len(results) == 3
    assert all(isinstance(r, InferenceFailed) for r in results)
    assert all("boom" not in str(r) for r in results)
    assert stats.execution_count == len(model.calls)
    assert sum(model.calls) == 3  # each row ran once, in whichever batches formed
    executor.shutdown()


def test_wrong_number_of_output_rows_is_a_failure() -> None:
    def short(inputs: dict[str, Any]) -> dict[str, Any]:
        return {"y": inputs["x"][:1]}

    stats = ModelStats()
    executor = ThreadPoolExecutor(1)
    batcher = Batcher(
        "m:1",
        short,
        executor,
        output_names=["y"],
        max_batch_size=8,
        max_batch_delay_s=0,
        max_queue_rows=8,
        stats=stats,
    )
    with pytest.raises(InferenceFailed, match="returned 1 rows"):
        asyncio.run(submit(batcher, 1, 2))
    executor.shutdown()


def test_closed_batcher_refuses_and_fails_queued() -> None:
    model = Recorder()
    batcher, _, executor = make(model, max_batch_delay_s=0)

    async def main() -> None:
        model.release.clear()
        running = asyncio.create_task(submit(batcher, 1))
        await busy(model)
        queued = asyncio.create_task(submit(batcher, 2))
        await settle(lambda: batcher.queued_rows == 1)
        await batcher.close()
        model.release.set()
        for waiting in (running, queued):  # neither hangs
            with pytest.raises(ModelNotReady):
                await waiting
        with pytest.raises(ModelNotReady):
            await submit(batcher, 3)

    asyncio.run(main())
    executor.shutdown()


def test_requests_with_different_shapes_never_share_a_batch() -> None:
    model = Recorder()
    batcher, _, executor = make(model)

    async def main() -> list[list[float]]:
        short = batcher.submit({"x": np.ones((1, 2), np.float32)}, 1, None)
        long = batcher.submit({"x": np.ones((1, 3), np.float32)}, 1, None)
        outcomes = await asyncio.gather(short, long)
        return [o.outputs["y"].reshape(-1).tolist() for o in outcomes]

    assert asyncio.run(main()) == [[2.0, 2.0], [2.0, 2.0, 2.0]]
    assert model.calls == [1, 1]
    executor.shutdown()


def test_callers_that_gave_up_free_their_queue_space() -> None:
    model = Recorder()
    batcher, _, executor = make(model, max_batch_size=1, max_queue_rows=2, max_batch_delay_s=0)

    async def main() -> list[float]:
        model.release.clear()
        running = asyncio.create_task(submit(batcher, 0))
        await busy(model)
        for v in (1, 2):  # fill the queue with callers that give up quickly
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(submit(batcher, v), 0.01)
        assert batcher.queued_rows == 0
        fresh = asyncio.create_task(submit(batcher, 3))  # not refused: nobody is waiting
        await settle(lambda: batcher.queued_rows == 1)
        model.release.set()
        await running
        return await fresh

    assert asyncio.run(main()) == [6.0]
    assert model.calls == [1, 1]  # the abandoned rows never ran
    executor.shutdown()


def test_batching_window_never_outlives_a_deadline() -> None:
    model = Recorder()
    batcher, _, executor = make(model, max_batch_delay_s=60)

    async def main() -> list[float]:
        # A window of a minute would outlive the 2 s deadline and drop the request;
        # waiting for company may take at most half of the time it has left.
        return await submit(batcher, 7, deadline=time.monotonic() + 2)

    assert asyncio.run(main()) == [14.0]
    executor.shutdown()


def test_admission_counts_rows_before_they_are_queued() -> None:
    model = Recorder()
    batcher, stats, executor = make(model, max_batch_size=2, max_queue_rows=4)

    async def main() -> None:
        admission = batcher.admit(3)
        with pytest.raises(ResourceExhausted):
            batcher.admit(2)
        admission.release()
        batcher.admit(4).release()

    asyncio.run(main())
    assert stats.rejected_overload == 1
    executor.shutdown()


def test_drain_finishes_accepted_requests_and_refuses_new_ones() -> None:
    model = Recorder()
    batcher, _, executor = make(model, max_batch_size=1, max_batch_delay_s=0)

    async def main() -> list[list[float]]:
        model.release.clear()
        running = asyncio.create_task(submit(batcher, 1))
        await busy(model)
        queued = asyncio.create_task(submit(batcher, 2))
        await settle(lambda: batcher.queued_rows == 1)
        draining = asyncio.create_task(batcher.drain(5.0))
        await settle(lambda: batcher.draining)
        with pytest.raises(ModelNotReady):
            await submit(batcher, 3)
        model.release.set()
        await draining
        return [await running, await queued]

    assert asyncio.run(main()) == [[2.0], [4.0]]
    assert model.calls == [1, 1]
    executor.shutdown()


def test_drain_waits_for_requests_admitted_before_it() -> None:
    """A request admitted (pre-processing) before a reload began still runs."""
    model = Recorder()
    batcher, _, executor = make(model, max_batch_delay_s=0)

    async def main() -> list[float]:
        admission = batcher.admit(1)
        draining = asyncio.create_task(batcher.drain(5.0))
        await settle(lambda: batcher.draining)
        for _ in range(100):
            await asyncio.sleep(0)
        assert not draining.done()  # held open by the admission
        with pytest.raises(ModelNotReady):
            batcher.admit(1)
        outcome = await batcher.submit(rows(5), 1, None, admission)
        await asyncio.wait_for(draining, 5)
        return [float(v) for v in outcome.outputs["y"].reshape(-1)]

    assert asyncio.run(main()) == [10.0]
    executor.shutdown()


def test_a_released_admission_ends_the_drain() -> None:
    batcher, _, executor = make(Recorder())

    async def main() -> None:
        admission = batcher.admit(2)
        draining = asyncio.create_task(batcher.drain(5.0))
        await settle(lambda: batcher.draining)
        admission.release()  # e.g. pre-processing failed
        await asyncio.wait_for(draining, 1)
        with pytest.raises(ModelNotReady):
            await batcher.submit(rows(1), 1, None, admission)

    asyncio.run(main())
    executor.shutdown()

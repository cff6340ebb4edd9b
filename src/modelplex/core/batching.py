"""Dynamic batching: concurrent requests for one model version share model calls.

One `Batcher` per served model version owns a bounded queue of pending rows (at
priority levels: `queueing`) and one task that forms batches and runs them on
the version's own inference threads, at most `instances` at a time (or on the
loop, for batches under 0.5 ms: `queueing.BatchCost`). While they are busy, new
requests queue up and form the next batch, so batches grow with load on their
own; `max_batch_delay_s` additionally lets an idle instance wait briefly for a
fuller batch.

All times are `time.monotonic()` (uvloop's `loop.time()` is too coarse).

Guarantees:
* each caller gets exactly its own rows back, in order;
* the queue is bounded in rows and in expected wait (`admission.QueueBounds`):
  beyond either a request fails fast with ResourceExhausted instead of waiting;
* a request whose deadline passes (or whose caller gave up) while queued is
  dropped, never run;
* a failed batch fails each of its members with its own error.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from modelplex.core.admission import Admission, QueueBounds
from modelplex.core.catalog import BatchingInfo
from modelplex.core.queueing import (
    LOW_PRIORITY_SHARE,
    BatchCost,
    BatchOutcome,
    Pending,
    PendingQueue,
    Priority,
    check_outputs,
)
from modelplex.core.stats import ModelStats
from modelplex.core.tensors import Array
from modelplex.errors import (
    InferenceFailed,
    InferenceTimeout,
    ModelNotReady,
    ModelplexError,
)

log = logging.getLogger(__name__)

PredictFn = Callable[[dict[str, Array]], dict[str, Array]]


class Batcher:
    def __init__(
        self,
        name: str,
        predict: PredictFn,
        executor: Executor,
        *,
        output_names: list[str],
        max_batch_size: int,
        max_batch_delay_s: float,
        max_queue_rows: int,
        stats: ModelStats,
        instances: int = 1,
        inline: bool = False,
        low_priority_share: float = LOW_PRIORITY_SHARE,
        max_queue_wait_s: float = 0.0,
    ) -> None:
        self.name = name
        self._predict = predict
        self._executor = executor
        self._output_names = output_names
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.max_queue_rows = max(max_queue_rows, max_batch_size)
        self._stats = stats
        self._queue = PendingQueue()
        self._queued_rows = 0
        self._reserved = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        """No new admissions (draining); admitted requests may still queue."""
        self._stopped = False
        """Closed for good: nothing queues any more."""
        self.instances = instances
        self._free = asyncio.Semaphore(instances)
        self._running: set[asyncio.Task[None]] = set()
        self._progress = asyncio.Event()
        """Set whenever rows leave the queue, a batch ends or a reservation goes:
        what `drain` waits on."""
        self._inline = inline
        """Whether the runtime may run on the event loop when its batches are cheap
        (library code that never blocks; never a user's Python model)."""
        self._cost = BatchCost()
        self._bounds = QueueBounds(
            self.max_queue_rows,
            max(1, int(self.max_queue_rows * low_priority_share)),
            max_queue_wait_s,
            instances,
        )

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def draining(self) -> bool:
        """Whether new requests are refused (a drain or close has begun)."""
        return self._closed

    def settings(self) -> BatchingInfo:
        return BatchingInfo(
            max_batch_size=self.max_batch_size,
            max_batch_delay_ms=self.max_batch_delay_s * 1000,
            max_queue_size=self.max_queue_rows,
            instances=self.instances,
        )

    def admit(self, rows: int, priority: Priority = Priority.SYNC) -> Admission:
        """Reserve queue space for `rows`, or refuse at once with ResourceExhausted.
        Jobs and batch chunks may fill only part of the queue: the rest stays free
        for synchronous requests."""
        if self._closed:
            raise ModelNotReady(f"model '{self.name}' is unloading")
        waiting = self._queued_rows + self._reserved
        refusal = self._bounds.refusal(self.name, waiting, rows, priority, self._cost)
        if refusal is not None:
            self._stats.rejected_overload += 1
            raise refusal
        self._reserved += rows
        return Admission(rows, self._unreserve)

    def _unreserve(self, rows: int) -> None:
        self._reserved -= rows
        self._progress.set()

    async def submit(
        self,
        inputs: dict[str, Array],
        rows: int,
        deadline: float | None,
        admission: Admission | None = None,
        priority: Priority = Priority.SYNC,
    ) -> BatchOutcome:
        """Queue `rows` instances and wait for their outputs.

        Requests larger than `max_batch_size` are split into chunks that run in
        consecutive batches and are joined again here.
        """
        if admission is None:
            admission = self.admit(rows, priority)
        # A request admitted before a drain began is one the drain waits for.
        admission.release()  # the rows now count as queued instead
        if self._stopped:
            raise ModelNotReady(f"model '{self.name}' was unloaded")
        self._ensure_task()
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        chunks: list[Pending] = []
        for start in range(0, rows, self.max_batch_size):
            stop = min(start + self.max_batch_size, rows)
            part = inputs if stop - start == rows else {k: v[start:stop] for k, v in inputs.items()}
            pending = Pending(part, stop - start, loop.create_future(), deadline, now, priority)
            pending.future.add_done_callback(functools.partial(self._abandoned, pending))
            chunks.append(pending)
        self._queue.extend(chunks)
        self._queued_rows += rows
        self._wakeup.set()
        if len(chunks) == 1:
            return await chunks[0].future
        try:
            outcomes = await asyncio.gather(*(c.future for c in chunks))
        except BaseException:
            for chunk in chunks:
                chunk.future.cancel()
            raise
        return BatchOutcome(
            outputs={
                name: np.concatenate([o.outputs[name] for o in outcomes])
                for name in outcomes[0].outputs
            },
            queue_wait_s=max(o.queue_wait_s for o in outcomes),
            inference_s=sum(o.inference_s for o in outcomes),
            batch_size=max(o.batch_size for o in outcomes),
        )

    def _abandoned(self, item: Pending, _future: asyncio.Future[BatchOutcome]) -> None:
        """A caller gave up (deadline, disconnect): its rows stop counting at once."""
        if item.future.cancelled() and item.counted:
            item.counted = False
            self._queued_rows -= item.rows
            self._progress.set()

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"batcher:{self.name}"
            )

    async def drain(self, timeout_s: float) -> None:
        """Stop admitting requests, let admitted, queued and running ones finish
        (up to `timeout_s`), then close: a reload or unload loses no accepted request."""
        self._closed = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._queue or self._running or self._reserved:
                    self._progress.clear()
                    await self._progress.wait()
        await self.close()

    async def close(self) -> None:
        """Stop taking requests; fail whatever is still queued."""
        self._closed = self._stopped = True
        for task in [self._task, *self._running]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._fail_queued(ModelNotReady(f"model '{self.name}' was unloaded"))

    def _fail_queued(self, error: ModelplexError) -> None:
        for item in self._queue.drain():
            if not item.future.done():
                item.future.set_exception(type(error)(error.message))
        self._queued_rows = 0

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                # Wait for a free instance first: the batch keeps filling meanwhile.
                await self._free.acquire()
                try:
                    await self._wait_for_fuller_batch()
                    batch = self._take(time.monotonic())
                    if batch and self._runs_inline(sum(item.rows for item in batch)):
                        self._execute_inline(batch)
                        batch = []
                    elif batch:
                        task = loop.create_task(
                            self._execute(batch, loop), name=f"batch:{self.name}"
                        )
                except BaseException:
                    self._free.release()
                    raise
                if not batch:
                    self._free.release()
                    continue
                self._running.add(task)
                task.add_done_callback(self._finished)
        except asyncio.CancelledError:
            raise
        except BaseException:
            # A bug here must not leave callers waiting forever.
            log.exception("batcher for %s stopped", self.name)
            self._fail_queued(InferenceFailed(f"model '{self.name}' batcher failed"))
            raise

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._free.release()
        self._progress.set()

    async def _wait_for_fuller_batch(self) -> None:
        if self.max_batch_delay_s <= 0:
            return
        window_end = self._queue.oldest_enqueued() + self.max_batch_delay_s
        # Waiting for company may use at most half the time a queued request has left.
        deadlines = [i.deadline for i in self._queue if i.deadline is not None]
        if deadlines:
            now = time.monotonic()
            window_end = min(window_end, now + max(0.0, min(deadlines) - now) / 2)
        while self._queued_rows < self.max_batch_size:
            remaining = window_end - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return

    def _take(self, now: float) -> list[Pending]:
        """Pop up to `max_batch_size` live rows, dropping abandoned and expired ones."""
        return self._queue.take(self.max_batch_size, now, self._pop, self._expired)

    def _pop(self, item: Pending) -> None:
        if item.counted:
            item.counted = False
            self._queued_rows -= item.rows
        self._progress.set()

    def _expired(self, item: Pending) -> None:
        self._stats.dropped_expired += 1
        if not item.future.done():
            item.future.set_exception(
                InferenceTimeout(f"deadline passed while queued for model '{self.name}'")
            )

    def _merge_and_predict(self, parts: list[dict[str, Array]]) -> tuple[dict[str, Array], float]:
        """The outputs and the model's own time (on an inference thread, usually:
        copying a batch of images is not for the event loop)."""
        start = time.perf_counter()
        merged = parts[0] if len(parts) == 1 else {
            name: np.concatenate([part[name] for part in parts]) for name in parts[0]
        }  # fmt: skip
        return self._predict(merged), time.perf_counter() - start

    def _runs_inline(self, rows: int) -> bool:
        return self._inline and self._cost.cheap(rows)

    def _record(self, rows: int, elapsed: float, compute: float | None = None) -> None:
        """`compute`: the model's own time, when `elapsed` also holds a thread hop
        (the inline decision is about the model's cost, not the hop's: timed with
        the hop, a busy machine kept cheap models on threads for good)."""
        self._stats.record_batch(rows, elapsed)
        self._cost.record(rows, elapsed if compute is None else compute)

    def _execute_inline(self, batch: list[Pending]) -> None:
        rows = sum(item.rows for item in batch)
        start = time.monotonic()
        try:
            outputs, _ = self._merge_and_predict([item.inputs for item in batch])
            self._check_outputs(outputs, rows)
        except Exception as exc:
            self._failed(batch, rows, start, exc)
            return
        self._deliver(batch, rows, start, outputs)

    async def _execute(self, batch: list[Pending], loop: asyncio.AbstractEventLoop) -> None:
        rows = sum(item.rows for item in batch)
        parts = [item.inputs for item in batch]
        start = time.monotonic()
        try:
            outputs, compute = await loop.run_in_executor(
                self._executor, self._merge_and_predict, parts
            )
            self._check_outputs(outputs, rows)
        except asyncio.CancelledError:
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(ModelNotReady(f"model '{self.name}' was unloaded"))
            raise
        except Exception as exc:
            self._failed(batch, rows, start, exc)
            return
        self._deliver(batch, rows, start, outputs, compute)

    def _failed(self, batch: list[Pending], rows: int, start: float, exc: Exception) -> None:
        self._record(rows, time.monotonic() - start)
        if not isinstance(exc, ModelplexError):
            log.error("model %s failed on a batch of %d rows", self.name, rows, exc_info=exc)
        for item in batch:
            if not item.future.done():
                item.future.set_exception(self._member_error(exc, rows))

    def _deliver(
        self,
        batch: list[Pending],
        rows: int,
        start: float,
        outputs: dict[str, Array],
        compute: float | None = None,
    ) -> None:
        elapsed = time.monotonic() - start
        self._record(rows, elapsed, compute)
        offset = 0
        for item in batch:
            part = (
                outputs
                if len(batch) == 1
                else {k: v[offset : offset + item.rows] for k, v in outputs.items()}
            )
            offset += item.rows
            if not item.future.done():
                self._stats.queue.add(start - item.enqueued)
                item.future.set_result(BatchOutcome(part, start - item.enqueued, elapsed, rows))

    def _member_error(self, exc: Exception, rows: int) -> ModelplexError:
        """What each member of a failed batch hears: the runtime's own domain error
        (a graph refusing the input is the client's problem), else InferenceFailed."""
        if isinstance(exc, ModelplexError):
            return type(exc)(exc.message)  # one instance per caller: tracebacks are per raise
        return InferenceFailed(f"model '{self.name}' failed on a batch of {rows} rows")

    def _check_outputs(self, outputs: dict[str, Array], rows: int) -> None:
        check_outputs(self.name, self._output_names, outputs, rows)

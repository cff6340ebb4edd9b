"""Running a pipeline's steps: step functions, model steps, timeouts and step retries.

How step attempts relate to job attempts (they never multiply) is decided
here and documented in `modelplex.jobs.pipelines`: a step with its own
`retry` makes its last failure final for the job; a step without one hands a
retryable failure to the job's retry policy.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

import numpy as np

from modelplex.core.tensors import Array
from modelplex.errors import (
    InferenceTimeout,
    InvalidInput,
    JobCancelled,
    ModelplexError,
    StepFailed,
    StepStuck,
    StepTimeout,
)
from modelplex.jobs.control import JobControl, StepFailure
from modelplex.jobs.pipelines import Pipeline, StepConfig, StepError
from modelplex.records import JobError, StepStatus

if TYPE_CHECKING:
    from modelplex.jobs.runner import JobRunner

log = logging.getLogger(__name__)

T = TypeVar("T")


class Context:
    """The `StepContext` of one step attempt (sync steps call it from their thread).

    `stop()` ends the attempt from outside (its timeout passed): `cancelled()`
    turns true and `check_cancelled()` raises, as for a cancelled job. Calls
    back into the loop (`infer`, `read_upload`) wait at most until the
    attempt's deadline."""

    def __init__(
        self,
        runner: JobRunner,
        control: JobControl,
        index: int,
        loop: asyncio.AbstractEventLoop,
        timeout_s: float,
        options: dict[str, Any] | None = None,
    ) -> None:
        self._runner = runner
        self.options = options if options is not None else {}
        self._control = control
        self.index = index
        self._loop = loop
        self.job_id = control.job.id
        self.step = control.steps[index]["name"]
        self._deadline = time.monotonic() + timeout_s
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def progress(self, fraction: float) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        self._loop.call_soon_threadsafe(
            lambda: self._control.update_step(self.index, progress=round(fraction, 4))
        )

    def cancelled(self) -> bool:
        return self._control.cancel.is_set() or self._stopped.is_set()

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise JobCancelled()

    def infer(
        self, model: str, inputs: dict[str, Array], version: str | None = None
    ) -> dict[str, Array]:
        return self._on_loop(self._runner.infer(model, inputs, version))

    def read_upload(self) -> bytes:
        ref = self._control.job.upload_ref
        if ref is None:
            raise InvalidInput("no file was uploaded with this job")
        return self._on_loop(self._runner.blobs.get(ref))

    def _on_loop(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the event loop and wait for it, never past the deadline."""
        if self.cancelled():
            work.close()
            raise JobCancelled()
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        try:
            return future.result(timeout=max(0.0, self._deadline - time.monotonic()))
        except TimeoutError:
            future.cancel()
            message = f"step '{self.step}' ran out of time waiting for the server"
            raise StepTimeout(message) from None

    def open_upload(self) -> BinaryIO:
        ref = self._control.job.upload_ref
        if ref is None:
            raise InvalidInput("no file was uploaded with this job")
        return self._runner.blobs.open_file(ref)  # a local open: no hop through the loop


class PipelineRun:
    """One run of a pipeline's steps for one job (or one batch line)."""

    def __init__(self, runner: JobRunner, pipeline: Pipeline, control: JobControl) -> None:
        if pipeline.config is None:  # the runner only hands over loaded pipelines
            raise StepFailed(f"pipeline '{pipeline.name}' has no steps")
        self._runner = runner
        self._pipeline = pipeline
        self._steps = pipeline.config.steps
        self._options = pipeline.config.options
        self._control = control

    async def run(self, data: Any, *, offset: int = 0) -> Any:
        """Run every step; `offset` is the index of the first step in `control.steps`."""
        control = self._control
        for i, step in enumerate(self._steps):
            index = offset + i
            if control.cancel.is_set():
                raise JobCancelled()
            control.update_step(
                index, status=StepStatus.RUNNING.value, started_at=time.time(), progress=0.0
            )
            data = await self._with_retries(step, index, data)
            control.update_step(
                index, status=StepStatus.COMPLETED.value, finished_at=time.time(), progress=1.0
            )
        return data

    async def _with_retries(self, step: StepConfig, index: int, data: Any) -> Any:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            attempt += 1
            # A context per attempt: stopping a timed-out attempt must not stop the next.
            context = Context(
                self._runner, self._control, index, loop, step.timeout_s, self._options
            )
            try:
                return await self._attempt(step, context, data)
            except JobCancelled:
                self._control.update_step(index, status=StepStatus.CANCELLED.value)
                raise
            except Exception as exc:  # every failure becomes a JobError with a stable code
                error = self._error(step, exc)
            if step.retry is not None:
                if error.retryable and attempt < step.retry.max_attempts:
                    log.warning("job %s step %s attempt %d: %s", context.job_id, step.name,
                                attempt, error.message)  # fmt: skip
                    await asyncio.sleep(step.retry.backoff.delay(attempt))
                    continue
                # The step's own retries were the retries: the job must not run it again.
                error = replace(error, retryable=False)
            self._control.update_step(
                index, status=StepStatus.FAILED.value, finished_at=time.time(),
                error=error.as_dict(),
            )  # fmt: skip
            raise StepFailure(error)

    async def _attempt(self, step: StepConfig, context: Context, data: Any) -> Any:
        function = self._pipeline.functions[step.function] if step.function else None
        if function is not None and not inspect.iscoroutinefunction(function):
            return await self._sync_attempt(function, step, context, data)
        async with asyncio.timeout(step.timeout_s):
            if step.model is not None:
                return await self._model_step(step.model, step, context, data)
            if function is None:  # StepConfig requires one of model or function
                raise StepFailed(f"step '{step.name}' has nothing to run")
            return await function(context, data)

    async def _sync_attempt(
        self, function: Callable[..., Any], step: StepConfig, context: Context, data: Any
    ) -> Any:
        """A sync step on a thread of the runner's step pool. Past its timeout it is
        signalled and waited for (at most `stop_grace_s`): the next attempt, or the
        job's retry, only starts once this one can no longer write anything."""
        runner = self._runner
        future = runner.step_threads.submit(function, context, data)
        waiter = asyncio.wrap_future(future)
        try:
            done, _ = await asyncio.wait({waiter}, timeout=step.timeout_s)
        except asyncio.CancelledError:  # the worker gave up on the job (drain): tell the step
            context.stop()
            raise
        if done:
            return waiter.result()
        context.stop()
        future.cancel()  # one still waiting for a thread never starts
        stopped, _ = await asyncio.wait({waiter}, timeout=runner.stop_grace_s)
        if stopped:
            if not waiter.cancelled():
                waiter.exception()  # what it raised once stopped is moot
            raise TimeoutError()
        runner.abandon(future)
        raise StepStuck(
            f"step '{step.name}' ran past its timeout of {step.timeout_s:g} s and did not stop "
            f"within {runner.stop_grace_s:g} s of being signalled; not retried while it may "
            "still be running"
        )

    @staticmethod
    def _error(step: StepConfig, exc: Exception) -> JobError:
        if isinstance(exc, TimeoutError):
            message = f"step '{step.name}' did not finish within {step.timeout_s:g} s"
            timeout = InferenceTimeout(message) if step.model else StepTimeout(message)
            return JobError.of(timeout, step.name)
        if isinstance(exc, StepError):
            return JobError(exc.code, exc.message, step.name, exc.retryable)
        if isinstance(exc, ModelplexError):
            return JobError.of(exc, step.name)
        log.error("step %s raised", step.name, exc_info=exc)
        failed = StepFailed(f"step '{step.name}' failed: {type(exc).__name__} (see the worker log)")
        return JobError.of(failed, step.name)

    async def _model_step(self, model: str, step: StepConfig, context: Context, data: Any) -> Any:
        """The step's input tensor in chunks of `batch_size`, as many at once as the
        model has instances, through the model's own batcher."""
        served = self._runner.dataplane.resolve(model, step.version)
        input_name = served.inputs[0].name
        key = step.input or input_name
        if not isinstance(data, dict) or key not in data:
            raise StepFailed(f"step '{step.name}' needs '{key}' from the step before")
        tensor = np.asarray(data[key])
        chunks = [tensor[i : i + step.batch_size] for i in range(0, len(tensor), step.batch_size)]
        outputs: list[dict[str, Array] | None] = [None] * len(chunks)
        gate = asyncio.Semaphore(max(1, served.batching.instances))
        done = 0

        async def run(i: int) -> None:
            nonlocal done
            async with gate:
                context.check_cancelled()
                outputs[i] = await self._runner.infer(model, {input_name: chunks[i]}, step.version)
                done += 1
                context.progress(done / len(chunks))

        await asyncio.gather(*(run(i) for i in range(len(chunks))))
        merged = {
            name: np.concatenate([o[name] for o in outputs if o is not None])
            for name in (outputs[0] or {})
        } if chunks else {}  # fmt: skip
        return {**data, (step.output or step.name): merged}

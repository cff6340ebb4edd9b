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
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from modelplex.core.tensors import Array
from modelplex.errors import (
    InferenceTimeout,
    InvalidInput,
    JobCancelled,
    ModelplexError,
    StepFailed,
    StepTimeout,
)
from modelplex.jobs.control import JobControl, StepFailure
from modelplex.jobs.pipelines import Pipeline, StepConfig, StepError
from modelplex.records import JobError, StepStatus

if TYPE_CHECKING:
    from modelplex.jobs.runner import JobRunner

log = logging.getLogger(__name__)


class Context:
    """The `StepContext` a step function receives (sync steps call it from a thread)."""

    def __init__(
        self, runner: JobRunner, control: JobControl, index: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._runner = runner
        self._control = control
        self.index = index
        self._loop = loop
        self.job_id = control.job.id
        self.step = control.steps[index]["name"]

    def progress(self, fraction: float) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        self._loop.call_soon_threadsafe(
            lambda: self._control.update_step(self.index, progress=round(fraction, 4))
        )

    def cancelled(self) -> bool:
        return self._control.cancel.is_set()

    def check_cancelled(self) -> None:
        if self._control.cancel.is_set():
            raise JobCancelled()

    def infer(
        self, model: str, inputs: dict[str, Array], version: str | None = None
    ) -> dict[str, Array]:
        future = asyncio.run_coroutine_threadsafe(
            self._runner.infer(model, inputs, version), self._loop
        )
        return future.result()

    def read_upload(self) -> bytes:
        ref = self._control.job.upload_ref
        if ref is None:
            raise InvalidInput("no file was uploaded with this job")
        return asyncio.run_coroutine_threadsafe(self._runner.blobs.get(ref), self._loop).result()

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
        self._control = control

    async def run(self, data: Any, *, offset: int = 0) -> Any:
        """Run every step; `offset` is the index of the first step in `control.steps`."""
        control = self._control
        loop = asyncio.get_running_loop()
        for i, step in enumerate(self._steps):
            index = offset + i
            if control.cancel.is_set():
                raise JobCancelled()
            control.update_step(
                index, status=StepStatus.RUNNING.value, started_at=time.time(), progress=0.0
            )
            context = Context(self._runner, control, index, loop)
            data = await self._with_retries(step, context, data)
            control.update_step(
                index, status=StepStatus.COMPLETED.value, finished_at=time.time(), progress=1.0
            )
        return data

    async def _with_retries(self, step: StepConfig, context: Context, data: Any) -> Any:
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(step.timeout_s):
                    return await self._step(step, context, data)
            except JobCancelled:
                self._control.update_step(context.index, status=StepStatus.CANCELLED.value)
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
                context.index, status=StepStatus.FAILED.value, finished_at=time.time(),
                error=error.as_dict(),
            )  # fmt: skip
            raise StepFailure(error)

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

    async def _step(self, step: StepConfig, context: Context, data: Any) -> Any:
        if step.model is not None:
            return await self._model_step(step.model, step, context, data)
        if step.function is None:  # StepConfig requires one of model or function
            raise StepFailed(f"step '{step.name}' has nothing to run")
        function = self._pipeline.functions[step.function]
        if inspect.iscoroutinefunction(function):
            return await function(context, data)
        return await asyncio.to_thread(function, context, data)

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

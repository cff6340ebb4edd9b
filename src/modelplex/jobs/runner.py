"""Running one job: a model call, a pipeline's steps, or a chunk of a batch.

The runner returns an outcome; it never writes the job's status (the worker
persists the outcome through the store's transition). Progress and step events
go into the job's `JobControl`, which the worker flushes to the database a few
times a second, so a job that takes milliseconds writes nothing until it ends.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelplex.core.dataplane import DataPlane
from modelplex.core.instances import parse_predict_json, predictions_json
from modelplex.core.tensors import Array
from modelplex.core.types import InferenceRequest
from modelplex.error_map import public_message, wire_error
from modelplex.errors import ModelplexError
from modelplex.jobs.models import Job, JobError, JobKind, NewDelivery, StepStatus
from modelplex.jobs.pipelines import (
    JobCancelled,
    Pipeline,
    PipelineRegistry,
    PipelineState,
    StepConfig,
    StepError,
)
from modelplex.jobs.webhooks import event_payload
from modelplex.storage.blobs import BlobStore

log = logging.getLogger(__name__)

RETRYABLE_CODES = frozenset(
    {"INFERENCE_TIMEOUT", "STEP_TIMEOUT", "RESOURCE_EXHAUSTED", "MODEL_NOT_READY", "STEP_FAILED"}
)
STEP_EVENT = "job.step"
CHUNK_LINES_IN_FLIGHT = 64
LINE_ATTEMPTS = 3
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


Outcome = Completed | Failed | Cancelled


class StepFailure(Exception):
    def __init__(self, error: JobError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(eq=False)
class JobControl:
    """What a running job shares with its worker: cancellation and progress."""

    job: Job
    steps: list[dict[str, Any]] = field(default_factory=list)
    progress: float = 0.0
    dirty: bool = False
    events: list[NewDelivery] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: bool = False
    """Set when the heartbeat found the lease gone: the job's work is moot."""

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
        if job.callback_url and STEP_EVENT in job.callback_events:
            data = {"job_id": job.id, "step": dict(self.steps[index]), "progress": self.progress}
            self.events.append(
                NewDelivery(STEP_EVENT, job.callback_url, event_payload(STEP_EVENT, data))
            )


class _Context:
    """The `StepContext` a step function receives."""

    def __init__(
        self, runner: JobRunner, control: JobControl, index: int, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._runner = runner
        self._control = control
        self.index = index
        self._loop = loop
        self.job_id = control.job.id
        self.step = control.steps[index]["name"]
        self._last = 0.0

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
            raise StepError("INVALID_INPUT", "no file was uploaded with this job")
        return asyncio.run_coroutine_threadsafe(self._runner.blobs.get(ref), self._loop).result()


class JobRunner:
    def __init__(self, dataplane: DataPlane, pipelines: PipelineRegistry, blobs: BlobStore) -> None:
        self.dataplane = dataplane
        self.pipelines = pipelines
        self.blobs = blobs

    async def run(self, job: Job, control: JobControl) -> Outcome:
        try:
            data = await self._input(job)
            if job.kind is JobKind.MODEL:
                return Completed(await self._model_job(job, data, control))
            if job.kind is JobKind.PIPELINE:
                pipeline = self._pipeline(job.target)
                return Completed(await self.run_pipeline(pipeline, data, control))
            return await self._chunk(job, data, control)
        except JobCancelled:
            return Cancelled()
        except StepFailure as failure:
            return Failed(failure.error)
        except ModelplexError as exc:
            code = wire_error(exc).code
            return Failed(JobError(code, exc.message, None, code in RETRYABLE_CODES))

    async def _input(self, job: Job) -> Any:
        if job.input_ref is None:
            return job.input
        return orjson.loads(await self.blobs.get(job.input_ref))

    def _pipeline(self, name: str) -> Pipeline:
        pipeline = self.pipelines.get(name)
        if pipeline.state is not PipelineState.READY or pipeline.config is None:
            raise StepFailure(JobError("PIPELINE_NOT_READY", f"pipeline '{name}' failed to load"))
        return pipeline

    # -- model jobs ----------------------------------------------------------
    async def _model_job(self, job: Job, data: Any, control: JobControl) -> dict[str, Any]:
        control.update_step(0, status=StepStatus.RUNNING.value, started_at=time.time())
        try:
            result = await self.predict(job.target, job.version, data)
        except ModelplexError as exc:
            code = wire_error(exc).code
            error = JobError(code, exc.message, "inference", code in RETRYABLE_CODES)
            control.update_step(0, status=StepStatus.FAILED.value, finished_at=time.time())
            raise StepFailure(error) from exc
        control.update_step(
            0, status=StepStatus.COMPLETED.value, finished_at=time.time(), progress=1.0
        )
        return result

    async def predict(self, model: str, version: str | None, body: Any) -> dict[str, Any]:
        """A /v1 predict body in, the /v1 predict answer's model and predictions out."""
        served = self.dataplane.resolve(model, version)
        inputs, options = parse_predict_json(body, served)
        request = InferenceRequest(
            model=model,
            version=served.version,
            inputs=inputs,
            arrived_at=time.monotonic(),
            top_k=options.top_k,
            outputs=options.outputs,
        )
        result = await self.dataplane.infer(request)
        return {
            "model": {"name": result.model, "version": result.version},
            "predictions": predictions_json(result, options.top_k),
        }

    async def infer(
        self, model: str, inputs: dict[str, Array], version: str | None = None
    ) -> dict[str, Array]:
        request = InferenceRequest(
            model=model, version=version, inputs=inputs, arrived_at=time.monotonic()
        )
        return (await self.dataplane.infer(request)).outputs

    # -- pipelines -----------------------------------------------------------
    async def run_pipeline(
        self, pipeline: Pipeline, data: Any, control: JobControl, *, offset: int = 0
    ) -> Any:
        """Run every step; `offset` is the index of the first step in `control.steps`."""
        assert pipeline.config is not None  # guaranteed by _pipeline()
        loop = asyncio.get_running_loop()
        for i, step in enumerate(pipeline.config.steps):
            index = offset + i
            if control.cancel.is_set():
                raise JobCancelled()
            control.update_step(
                index, status=StepStatus.RUNNING.value, started_at=time.time(), progress=0.0
            )
            context = _Context(self, control, index, loop)
            data = await self._step_with_retries(pipeline, step, context, data, control)
            control.update_step(
                index, status=StepStatus.COMPLETED.value, finished_at=time.time(), progress=1.0
            )
        return data

    async def _step_with_retries(
        self, pipeline: Pipeline, step: StepConfig, context: _Context, data: Any,
        control: JobControl,
    ) -> Any:  # fmt: skip
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(step.timeout_s):
                    return await self._step(pipeline, step, context, data)
            except JobCancelled:
                control.update_step(context.index, status=StepStatus.CANCELLED.value)
                raise
            except Exception as exc:  # every failure becomes a JobError with a stable code
                error = self._step_error(step, exc)
            if error.retryable and attempt < step.retry.max_attempts:
                log.warning("job %s step %s attempt %d: %s", control.job.id, step.name, attempt,
                            error.message)  # fmt: skip
                await asyncio.sleep(step.retry.backoff_s * 2 ** (attempt - 1))
                continue
            control.update_step(
                context.index, status=StepStatus.FAILED.value, finished_at=time.time(),
                error=error.as_dict(),
            )  # fmt: skip
            raise StepFailure(error)

    def _step_error(self, step: StepConfig, exc: Exception) -> JobError:
        if isinstance(exc, TimeoutError):
            code = "INFERENCE_TIMEOUT" if step.model else "STEP_TIMEOUT"
            message = f"step '{step.name}' did not finish within {step.timeout_s:g} s"
            return JobError(code, message, step.name, retryable=True)
        if isinstance(exc, StepError):
            return JobError(exc.code, exc.message, step.name, exc.retryable)
        if isinstance(exc, ModelplexError):
            code = wire_error(exc).code
            return JobError(code, public_message(exc), step.name, code in RETRYABLE_CODES)
        log.error("step %s raised", step.name, exc_info=exc)
        message = f"step '{step.name}' failed: {type(exc).__name__} (see the worker log)"
        return JobError("STEP_FAILED", message, step.name, retryable=True)

    async def _step(
        self, pipeline: Pipeline, step: StepConfig, context: _Context, data: Any
    ) -> Any:
        if step.model is not None:
            return await self._model_step(step, context, data)
        assert step.function is not None  # StepConfig requires one of model or function
        function = pipeline.functions[step.function]
        if inspect.iscoroutinefunction(function):
            return await function(context, data)
        return await asyncio.to_thread(function, context, data)

    async def _model_step(self, step: StepConfig, context: _Context, data: Any) -> Any:
        assert step.model is not None
        served = self.dataplane.resolve(step.model, step.version)
        input_name = served.inputs[0].name
        key = step.input or input_name
        if not isinstance(data, dict) or key not in data:
            raise StepError("STEP_FAILED", f"step '{step.name}' needs '{key}' from the step before")
        tensor = np.asarray(data[key])
        chunks = [tensor[i : i + step.batch_size] for i in range(0, len(tensor), step.batch_size)]
        outputs: list[dict[str, Array] | None] = [None] * len(chunks)
        gate = asyncio.Semaphore(max(1, served.batcher.instances))
        done = 0

        async def run(i: int) -> None:
            nonlocal done
            async with gate:
                context.check_cancelled()
                outputs[i] = await self.infer(
                    step.model or "", {input_name: chunks[i]}, step.version
                )
                done += 1
                context.progress(done / len(chunks))

        await asyncio.gather(*(run(i) for i in range(len(chunks))))
        merged = {
            name: np.concatenate([o[name] for o in outputs if o is not None])
            for name in (outputs[0] or {})
        } if chunks else {}  # fmt: skip
        return {**data, (step.output or step.name): merged}

    # -- batch chunks --------------------------------------------------------
    async def _chunk(self, job: Job, data: Any, control: JobControl) -> Outcome:
        items: list[dict[str, Any]] = data["items"]
        options: dict[str, Any] = data.get("options") or {}
        control.update_step(0, status=StepStatus.RUNNING.value, started_at=time.time())
        if data.get("target_kind") == JobKind.MODEL.value:
            results = await self._chunk_model(job, items, options)
        else:
            results = await self._chunk_pipeline(job, items, control)
        ok = sum(1 for r in results if "output" in r)
        control.update_step(
            0, status=StepStatus.COMPLETED.value, finished_at=time.time(), progress=1.0
        )
        return Completed({"items": results}, lines=(ok, len(results) - ok))

    async def _chunk_model(
        self, job: Job, items: list[dict[str, Any]], options: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Lines go to the model together (they meet in its batcher and share calls),
        a bounded number at a time so a big chunk cannot overflow the model's queue;
        a line that fails fails alone, after retries if its failure was transient."""
        gate = asyncio.Semaphore(CHUNK_LINES_IN_FLIGHT)

        async def one(item: dict[str, Any]) -> dict[str, Any]:
            body: dict[str, Any] = {"instance": item["input"]}
            if options:
                body["parameters"] = options
            attempts = 0
            while True:
                try:
                    async with gate:
                        answer = await self.predict(job.target, job.version, body)
                    return {"custom_id": item["custom_id"], "output": answer["predictions"][0]}
                except ModelplexError as exc:
                    code = wire_error(exc).code
                    attempts += 1
                    if code not in RETRYABLE_CODES or attempts >= LINE_ATTEMPTS:
                        error = {"code": code, "message": public_message(exc)}
                        return {"custom_id": item["custom_id"], "error": error}
                await asyncio.sleep(0.1 * 2**attempts)

        return list(await asyncio.gather(*(one(item) for item in items)))

    async def _chunk_pipeline(
        self, job: Job, items: list[dict[str, Any]], control: JobControl
    ) -> list[dict[str, Any]]:
        pipeline = self._pipeline(job.target)
        results = []
        for n, item in enumerate(items):
            if control.cancel.is_set():
                raise JobCancelled()
            # Each line runs the pipeline on its own; its steps are not the chunk's.
            scratch = JobControl(job, cancel=control.cancel)
            scratch.steps = [{"name": s, "status": "PENDING"} for s in pipeline.step_names]
            try:
                output = await self.run_pipeline(pipeline, item["input"], scratch)
                results.append({"custom_id": item["custom_id"], "output": output})
            except StepFailure as failure:
                results.append({"custom_id": item["custom_id"], "error": failure.error.as_dict()})
            control.update_step(0, progress=round((n + 1) / len(items), 4))
        return results

"""Running one job: a model call, a pipeline's steps, or a chunk of a batch.

The runner returns an outcome; it never writes the job's status (the worker
persists the outcome through the store's guarded transition).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Future
from typing import Any

import orjson

from modelplex.core.dataplane import DataPlane
from modelplex.core.instances import parse_predict_json, predictions_json
from modelplex.core.queueing import Priority
from modelplex.core.tensors import Array
from modelplex.core.types import InferenceRequest, InferenceResult
from modelplex.core.validation import trusted
from modelplex.error_map import public_message, wire_error
from modelplex.errors import JobCancelled, ModelplexError, PipelineNotReady
from modelplex.executors import Pool
from modelplex.jobs import requests
from modelplex.jobs.control import Cancelled, Completed, Failed, JobControl, Outcome, StepFailure
from modelplex.jobs.pipelines import Pipeline, PipelineRegistry, PipelineState
from modelplex.jobs.steps import PipelineRun
from modelplex.records import Job, JobError, JobKind, StepStatus, pending_steps
from modelplex.retry import Backoff
from modelplex.storage.blobs import BlobStore

log = logging.getLogger(__name__)

DEFAULT_STEP_THREADS = 4
STOP_GRACE_S = 10.0
CHUNK_LINES_IN_FLIGHT = 64
LINE_ATTEMPTS = 3
CANCEL_CHECK_S = 0.1
LINE_BACKOFF = Backoff(base_s=0.2, cap_s=2.0)
"""A batch line that failed transiently (the model's queue was full) waits this long."""


class JobRunner:
    def __init__(
        self,
        dataplane: DataPlane,
        pipelines: PipelineRegistry,
        blobs: BlobStore,
        *,
        step_threads: Pool | None = None,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        """`step_threads`: where sync steps run, a thread per job the worker runs
        (`Executors.steps`); `stop_grace_s`: how long a step past its timeout may
        take to stop once signalled."""
        self.dataplane = dataplane
        self.pipelines = pipelines
        self.blobs = blobs
        self.step_threads = step_threads or Pool("steps", DEFAULT_STEP_THREADS)
        self.stop_grace_s = stop_grace_s
        self._abandoned: set[Future[Any]] = set()

    @property
    def abandoned(self) -> int:
        """Step threads still running for attempts that gave up on them: each holds
        a step thread, so the worker runs that many jobs fewer until it ends."""
        return len(self._abandoned)

    def abandon(self, future: Future[Any]) -> None:
        log.error(
            "a step thread did not stop after its timeout; %d abandoned (a worker restart "
            "ends them)", len(self._abandoned) + 1,
        )  # fmt: skip
        self._abandoned.add(future)
        future.add_done_callback(self._abandoned.discard)

    async def run(self, job: Job, control: JobControl) -> Outcome:
        try:
            data = await self._input(job)
            if job.kind is JobKind.MODEL:
                return Completed(await self._model_job(job, data, control))
            if job.kind is JobKind.PIPELINE:
                pipeline = self._pipeline(job.target)
                return Completed(await PipelineRun(self, pipeline, control).run(data))
            return await self._chunk(job, data, control)
        except JobCancelled:
            return Cancelled()
        except StepFailure as failure:
            return Failed(failure.error)
        except ModelplexError as exc:
            return Failed(JobError.of(exc))

    async def _input(self, job: Job) -> Any:
        if job.input_ref is None:
            return job.input
        return orjson.loads(await self.blobs.get(job.input_ref))

    def _pipeline(self, name: str) -> Pipeline:
        pipeline = self.pipelines.get(name)
        if pipeline.state is not PipelineState.READY or pipeline.config is None:
            raise PipelineNotReady(f"pipeline '{name}' failed to load")
        return pipeline

    # -- model jobs ----------------------------------------------------------
    async def _model_job(self, job: Job, data: Any, control: JobControl) -> dict[str, Any]:
        control.update_step(0, status=StepStatus.RUNNING.value, started_at=time.time())
        try:
            if requests.is_checked(data) and job.version is not None:
                result = await self._run_checked(job.target, job.version, data)
            else:  # queued before requests were checked at submission
                result = await self.predict(job.target, job.version, data)
        except ModelplexError as exc:
            control.update_step(0, status=StepStatus.FAILED.value, finished_at=time.time())
            raise StepFailure(JobError.of(exc, "inference")) from exc
        control.update_step(
            0, status=StepStatus.COMPLETED.value, finished_at=time.time(), progress=1.0
        )
        return result

    async def _run_checked(
        self, model: str, version: str, document: dict[str, Any]
    ) -> dict[str, Any]:
        """A request checked at submission: restored, not converted or checked again."""
        request, signature = requests.decode(document, model, version)
        checked = trusted(self.dataplane.resolve(model, version), request, signature)
        return _answer(await self.dataplane.execute(checked), request.top_k)

    async def predict(
        self, model: str, version: str | None, body: Any, priority: Priority | None = None
    ) -> dict[str, Any]:
        """A /v1 predict body in, the /v1 predict answer's model and predictions out."""
        served = self.dataplane.resolve(model, version)
        inputs, body = parse_predict_json(body, served)
        request = InferenceRequest(
            model=model,
            version=served.version,
            inputs=inputs,
            arrived_at=time.monotonic(),
            top_k=body.top_k,
            outputs=body.outputs,
        )
        return _answer(await self.dataplane.infer(request, priority=priority), body.top_k)

    async def infer(
        self, model: str, inputs: dict[str, Array], version: str | None = None
    ) -> dict[str, Array]:
        request = InferenceRequest(
            model=model, version=version, inputs=inputs, arrived_at=time.monotonic()
        )
        return (await self.dataplane.infer(request)).outputs

    # -- batch chunks --------------------------------------------------------
    async def _chunk(self, job: Job, data: Any, control: JobControl) -> Outcome:
        items: list[dict[str, Any]] = data["items"]
        options: dict[str, Any] = data.get("options") or {}
        control.update_step(0, status=StepStatus.RUNNING.value, started_at=time.time())
        if data.get("target_kind") == JobKind.MODEL.value:
            results = await self._chunk_model(job, items, options, control)
        else:
            results = await self._chunk_pipeline(job, items, control)
        ran = [r for r in results if r is not None]
        ok = sum(1 for r in ran if "output" in r)
        lines = (ok, len(ran) - ok)
        if len(ran) < len(items):  # the cancel stopped lines that had not run
            control.update_step(0, status=StepStatus.CANCELLED.value, finished_at=time.time())
            return Cancelled(lines, {"items": ran})
        control.update_step(
            0, status=StepStatus.COMPLETED.value, finished_at=time.time(), progress=1.0
        )
        return Completed({"items": ran}, lines=lines)

    async def _chunk_model(
        self, job: Job, items: list[dict[str, Any]], options: dict[str, Any], control: JobControl
    ) -> list[dict[str, Any] | None]:
        """Lines go to the model together (they meet in its batcher and share calls),
        a bounded number at a time so a big chunk cannot overflow the model's queue;
        a line that fails fails alone, after retries if its failure was transient.
        A cancel stops every line that has no answer yet (None): those waiting in
        the model's queue leave it without running."""
        gate = asyncio.Semaphore(CHUNK_LINES_IN_FLIGHT)

        async def one(item: dict[str, Any]) -> dict[str, Any]:
            body: dict[str, Any] = {"instance": item["input"]}
            if options:
                body["parameters"] = options
            attempts = 0
            while True:
                try:
                    async with gate:
                        answer = await self.predict(job.target, job.version, body, Priority.BATCH)
                    return {"custom_id": item["custom_id"], "output": answer["predictions"][0]}
                except ModelplexError as exc:
                    attempts += 1
                    wire = wire_error(exc)
                    if not wire.retryable or attempts >= LINE_ATTEMPTS:
                        error = {"code": wire.code, "message": public_message(exc)}
                        return {"custom_id": item["custom_id"], "error": error}
                await asyncio.sleep(LINE_BACKOFF.delay(attempts))

        lines = [asyncio.create_task(one(item), name=f"line:{job.id}") for item in items]
        watch = asyncio.create_task(_stop_on_cancel(control, lines), name=f"cancel:{job.id}")
        try:
            await asyncio.wait(lines)
        finally:
            watch.cancel()
            for line in lines:  # the chunk itself was cancelled (a drain): so are its lines
                line.cancel()
        return [None if line.cancelled() else line.result() for line in lines]

    async def _chunk_pipeline(
        self, job: Job, items: list[dict[str, Any]], control: JobControl
    ) -> list[dict[str, Any] | None]:
        pipeline = self._pipeline(job.target)
        results: list[dict[str, Any] | None] = [None] * len(items)
        for n, item in enumerate(items):
            if control.cancel.is_set():
                break
            # Each line runs the pipeline on its own; its steps are not the chunk's.
            scratch = JobControl(job, cancel=control.cancel)
            scratch.steps = pending_steps(pipeline.step_names)
            try:
                output = await PipelineRun(self, pipeline, scratch).run(item["input"])
                results[n] = {"custom_id": item["custom_id"], "output": output}
            except StepFailure as failure:
                results[n] = {"custom_id": item["custom_id"], "error": failure.error.as_dict()}
            except JobCancelled:
                break
            control.update_step(0, progress=round((n + 1) / len(items), 4))
        return results


async def _stop_on_cancel(control: JobControl, lines: list[asyncio.Task[Any]]) -> None:
    """Cancel the lines still running once the chunk's cancel is set (a thread-safe
    flag, so it is looked at every `CANCEL_CHECK_S`: half the worker's poll of the
    store, and only while a chunk runs)."""
    while not control.cancel.is_set():  # noqa: ASYNC110 (a threading.Event: steps' threads read it)
        await asyncio.sleep(CANCEL_CHECK_S)
    for line in lines:
        line.cancel()


def _answer(result: InferenceResult, top_k: int | None) -> dict[str, Any]:
    """What the /v1 predict endpoint answers, without its request metadata."""
    return {
        "model": {"name": result.model, "version": result.version},
        "predictions": predictions_json(result, top_k),
    }

"""The protocol-neutral data plane: typed requests in, typed results out.

REST routes, the gRPC servicer and the job runner only translate wire formats
into an `InferenceRequest` and an `InferenceResult` back; checking the request
(`validation`), deadlines, pre-processing, batching and post-processing happen
here.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from modelplex.core.deadlines import Stop
from modelplex.core.queueing import Priority
from modelplex.core.registry import ModelRegistry, ServedVersion
from modelplex.core.types import InferenceRequest, InferenceResult
from modelplex.core.validation import CheckedRequest, check
from modelplex.errors import InferenceTimeout, InvalidInput
from modelplex.settings import Settings


class DataPlane:
    def __init__(
        self, registry: ModelRegistry, settings: Settings, priority: Priority = Priority.SYNC
    ) -> None:
        self.registry = registry
        self._settings = settings
        self.priority = priority
        """The batcher priority of requests that name none (a job worker's: JOB)."""
        self._preprocess_pool = ThreadPoolExecutor(
            settings.effective_preprocess_threads, thread_name_prefix="preprocess"
        )

    def resolve(self, model: str, version: str | None = None) -> ServedVersion:
        """The version that would serve a request (raises the client's error if none)."""
        return self.registry.get(model, version)

    def deadline_for(self, served: ServedVersion, request: InferenceRequest) -> float:
        timeout_s = served.timeout_s
        if request.timeout_ms is not None:
            timeout_s = min(timeout_s, request.timeout_ms / 1000)
        return request.arrived_at + timeout_s

    def check(self, request: InferenceRequest) -> CheckedRequest:
        """The request checked against the version that would serve it."""
        return check(self.registry.get(request.model, request.version), request)

    async def infer(
        self, request: InferenceRequest, stop: Stop | None = None, priority: Priority | None = None
    ) -> InferenceResult:
        return await self.execute(self.check(request), stop, priority)

    async def execute(
        self, checked: CheckedRequest, stop: Stop | None = None, priority: Priority | None = None
    ) -> InferenceResult:
        """Run a checked request: deadline, admission, pre-processing, batch, results.

        `stop` is how an adapter says its caller went away (`Stop.cancel`); work
        that runs off the event loop checks it, and the request's deadline, between
        images, so neither a timed-out nor an abandoned request keeps a
        pre-processing thread busy after the answer no longer matters. `priority`:
        the queue class (sync requests ahead of jobs ahead of batch chunks)."""
        served, request, rows = checked.served, checked.request, checked.rows
        priority = self.priority if priority is None else priority
        deadline = self.deadline_for(served, request)
        if stop is None:
            stop = Stop(deadline)
        else:
            deadline = stop.until(deadline)
        started = time.monotonic()
        # asyncio's timeouts run on the loop's clock; convert our monotonic deadline.
        loop_deadline = asyncio.get_running_loop().time() + (deadline - started)
        try:
            async with asyncio.timeout_at(loop_deadline):
                result = await self._run(served, request, rows, stop, priority)
        except TimeoutError:
            served.stats.fail.add(time.monotonic() - started)
            raise InferenceTimeout(
                f"model '{served.model}' version '{served.version}' did not answer within "
                f"{(deadline - request.arrived_at) * 1000:.0f} ms"
            ) from None
        except BaseException:  # CancelledError too: an abandoned request failed as well
            served.stats.fail.add(time.monotonic() - started)
            raise
        served.stats.success.add(time.monotonic() - started)
        return result

    async def _run(
        self,
        served: ServedVersion,
        request: InferenceRequest,
        rows: int,
        stop: Stop,
        priority: Priority,
    ) -> InferenceResult:
        timings = request.timings
        inputs = request.inputs
        stop.check()  # a caller gone while its body was read takes no place in the queue
        # Shed load before pre-processing, not after.
        admission = served.batcher.admit(rows, priority)
        try:
            if served.preprocessor is not None:
                # Cancelling this await drops the work if no thread has taken it yet;
                # a thread that has stops at the next image through `stop.check`.
                outcome = await asyncio.get_running_loop().run_in_executor(
                    self._preprocess_pool, served.preprocessor, inputs, stop.check
                )
                inputs = outcome.inputs
                timings.decode_s += outcome.decode_s
                timings.preprocess_s += outcome.transform_s
                served.stats.compute_input.add(outcome.decode_s + outcome.transform_s)
                stop.check()  # the images took long: is anyone still waiting?
            input_shapes = {name: list(tensor.shape) for name, tensor in inputs.items()}
            batch = await served.batcher.submit(inputs, rows, stop.deadline, admission, priority)
        finally:
            admission.release()
        timings.queue_wait_s = batch.queue_wait_s
        timings.inference_s = batch.inference_s
        served.stats.compute_infer.add(batch.inference_s)

        post_start = time.perf_counter()
        outputs = batch.outputs
        if request.outputs is not None:
            outputs = {name: outputs[name] for name in request.outputs}
        classes = None
        # Outputs asked for by name are answered raw; labelled classes only when
        # none are named or top_k asks for them too (V2's classification extension).
        if served.classifier is not None and (request.outputs is None or request.top_k):
            scores = batch.outputs[served.classifier.output]
            classes = served.classifier.top_k(scores, request.top_k or 1)
        timings.postprocess_s = time.perf_counter() - post_start
        served.stats.compute_output.add(timings.postprocess_s)
        return InferenceResult(
            model=served.model,
            version=served.version,
            outputs=outputs,
            classes=classes,
            timings=timings,
            batch_size=batch.batch_size,
            rows=rows,
            input_shapes=input_shapes,
            version_info=served.info,
        )

    async def classify(
        self,
        image: bytes,
        *,
        model: str,
        version: str | None,
        top_k: int,
        arrived_at: float,
        request_id: str = "",
        timeout_ms: int | None = None,
        decode_s: float = 0.0,
        stop: Stop | None = None,
    ) -> InferenceResult:
        """One encoded image through an image classifier's pre-processing and model."""
        served = self.registry.get(model, version)
        if served.classifier is None or served.config.preprocessing is None:
            raise InvalidInput(f"model '{model}' is not an image classifier")
        images = np.empty(1, dtype=object)
        images[0] = image
        request = InferenceRequest(
            model=model,
            version=served.version,
            inputs={served.config.preprocessing.input: images},
            arrived_at=arrived_at,
            request_id=request_id,
            timeout_ms=timeout_ms,
            top_k=top_k,
        )
        request.timings.decode_s = decode_s
        return await self.infer(request, stop)

    def close(self) -> None:
        self._preprocess_pool.shutdown(wait=False, cancel_futures=True)

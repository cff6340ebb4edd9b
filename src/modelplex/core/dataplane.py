"""The protocol-neutral data plane: typed requests in, typed results out.

REST routes (and, later, gRPC servicers) only translate wire formats into an
`InferenceRequest` and an `InferenceResult` back; everything about deadlines,
pre-processing, batching and post-processing happens here.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from modelplex.core.registry import ModelRegistry, ServedVersion
from modelplex.core.tensors import Array, TensorSpec, batch_size_of
from modelplex.core.types import InferenceRequest, InferenceResult
from modelplex.errors import InferenceTimeout, InvalidInput
from modelplex.settings import Settings


class DataPlane:
    def __init__(self, registry: ModelRegistry, settings: Settings) -> None:
        self.registry = registry
        self._settings = settings
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

    async def infer(self, request: InferenceRequest) -> InferenceResult:
        served = self.registry.get(request.model, request.version)
        self._validate(served.inputs, request.inputs)
        rows = batch_size_of(request.inputs)
        if rows < 1:
            raise InvalidInput("the request has no instances")
        if rows > served.batcher.max_queue_rows:
            raise InvalidInput(
                f"the request has {rows} instances; model '{served.model}' accepts at most "
                f"{served.batcher.max_queue_rows} per request"
            )
        if request.top_k is not None and request.top_k < 1:
            raise InvalidInput("top_k must be at least 1")
        if request.outputs is not None:
            known = {o.name for o in served.outputs}
            unknown = [name for name in request.outputs if name not in known]
            if unknown:
                raise InvalidInput(f"unknown outputs {unknown}; the model has {sorted(known)}")
        deadline = self.deadline_for(served, request)
        started = time.monotonic()
        # asyncio's timeouts run on the loop's clock; convert our monotonic deadline.
        loop_deadline = asyncio.get_running_loop().time() + (deadline - started)
        try:
            async with asyncio.timeout_at(loop_deadline):
                result = await self._run(served, request, rows, deadline)
        except TimeoutError:
            served.stats.fail.add(time.monotonic() - started)
            raise InferenceTimeout(
                f"model '{served.model}' version '{served.version}' did not answer within "
                f"{(deadline - request.arrived_at) * 1000:.0f} ms"
            ) from None
        except Exception:
            served.stats.fail.add(time.monotonic() - started)
            raise
        served.stats.success.add(time.monotonic() - started)
        return result

    async def _run(
        self, served: ServedVersion, request: InferenceRequest, rows: int, deadline: float
    ) -> InferenceResult:
        timings = request.timings
        inputs = request.inputs
        admission = served.batcher.admit(rows)  # shed load before pre-processing, not after
        try:
            if served.preprocessor is not None:
                loop = asyncio.get_running_loop()
                outcome = await loop.run_in_executor(
                    self._preprocess_pool, served.preprocessor, inputs
                )
                inputs = outcome.inputs
                timings.decode_s += outcome.decode_s
                timings.preprocess_s += outcome.transform_s
                served.stats.compute_input.add(outcome.decode_s + outcome.transform_s)
            input_shapes = {name: list(tensor.shape) for name, tensor in inputs.items()}
            batch = await served.batcher.submit(inputs, rows, deadline, admission)
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
        if served.classifier is not None:
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
            version_details=served.describe(),
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
        return await self.infer(request)

    @staticmethod
    def _validate(specs: tuple[TensorSpec, ...], inputs: dict[str, Array]) -> None:
        by_name = {s.name: s for s in specs}
        unknown = sorted(set(inputs) - set(by_name))
        if unknown:
            raise InvalidInput(f"unknown inputs {unknown}; the model takes {sorted(by_name)}")
        missing = sorted(set(by_name) - set(inputs))
        if missing:
            raise InvalidInput(f"missing inputs {missing}")
        for name, tensor in inputs.items():
            by_name[name].check_batch(tensor)

    def close(self) -> None:
        self._preprocess_pool.shutdown(wait=False, cancel_futures=True)

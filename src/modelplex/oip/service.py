"""The protocol's operations over the data plane, for both transports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

import modelplex
from modelplex.core.catalog import ModelInfo, ModelState, VersionInfo
from modelplex.core.dataplane import DataPlane
from modelplex.core.registry import ModelRegistry, ServedVersion
from modelplex.core.served import ModelEntry
from modelplex.core.stats import Counter
from modelplex.core.tensors import Array, Datatype, TensorSpec
from modelplex.core.types import InferenceRequest
from modelplex.errors import InvalidInput, ModelLoadError, VersionNotFound

SERVER_NAME = "modelplex"
EXTENSIONS = ("binary_tensor_data", "classification", "model_repository", "statistics")
PLATFORMS = {"onnx": "onnxruntime_onnx", "sklearn": "sklearn", "python": "python"}
CONFIG_TYPES = {d: f"TYPE_{'STRING' if d is Datatype.BYTES else d.value}" for d in Datatype}


@dataclass(slots=True)
class V2Tensor:
    name: str
    datatype: Datatype
    shape: tuple[int, ...]
    data: Array
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class V2Request:
    model: str
    version: str | None
    inputs: list[V2Tensor]
    outputs: list[RequestedOutput] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    timeout_ms: int | None = None
    arrived_at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class V2Response:
    model: str
    version: str
    outputs: list[V2Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


class Repository(Protocol):
    """What load and unload calls reach: the registry, or (a server) the object that
    also tells the server's other processes (`modelplex.repository_sync`)."""

    async def load(self, model: str) -> ModelEntry: ...

    async def unload(self, model: str) -> None: ...


class _LocalRepository:
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    async def load(self, model: str) -> ModelEntry:
        return await self._registry.reload(model)

    async def unload(self, model: str) -> None:
        await self._registry.unload(model)


class V2Service:
    def __init__(self, dataplane: DataPlane, repository: Repository | None = None) -> None:
        self.dataplane = dataplane
        self.registry = dataplane.registry
        self.repository = repository or _LocalRepository(self.registry)

    # -- health and metadata -------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": SERVER_NAME,
            "version": modelplex.__version__,
            "extensions": list(EXTENSIONS),
        }

    def server_ready(self) -> bool:
        return self.readiness_problem() is None

    def readiness_problem(self) -> str | None:
        """Why the server is not ready (the same policy as `/readyz`), or None."""
        return self.registry.readiness().problem

    def model_ready(self, model: str, version: str | None) -> bool:
        return self.registry.is_ready(model, version)

    def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        served = self.dataplane.resolve(model, version)
        info = self.registry.describe(model)
        return {
            "name": model,
            "versions": [v.version for v in info.served_versions],
            "platform": PLATFORMS[served.runtime_kind.value],
            "inputs": [_tensor_metadata(s) for s in served.inputs],
            "outputs": [_tensor_metadata(s) for s in served.outputs],
        }

    # -- inference -----------------------------------------------------------
    async def infer(self, request: V2Request) -> V2Response:
        limit = _timeout_parameter(request.parameters)
        if limit is not None:  # the transport's deadline may be tighter, or absent
            request.timeout_ms = min(limit, request.timeout_ms or limit)
        served = self.dataplane.resolve(request.model, request.version)
        wanted = request.outputs or [RequestedOutput(o.name) for o in served.outputs]
        classes: int | None = None  # the classification extension's top_k, if asked
        for output in wanted:
            k = output.parameters.get("classification")
            if k is not None:
                k = _classification(served, output.name, k)
                classes = k if classes is None else max(classes, k)
        result = await self.dataplane.infer(
            InferenceRequest(
                model=request.model,
                version=served.version,
                inputs=_inputs(request.inputs),
                arrived_at=request.arrived_at,
                request_id=request.id or "",
                timeout_ms=request.timeout_ms,
                top_k=classes,
                outputs=[o.name for o in wanted] if request.outputs else None,
            )
        )
        datatypes = {o.name: o.datatype for o in served.outputs}
        tensors = []
        for output in wanted:
            k = output.parameters.get("classification")
            if k is not None and result.classes is not None:
                tensors.append(_classification_tensor(output, result.classes, int(k)))
                continue
            data = result.outputs[output.name]
            tensors.append(
                V2Tensor(output.name, datatypes[output.name], data.shape, data, output.parameters)
            )
        return V2Response(request.model, result.version, tensors, request.id)

    # -- configuration, statistics, repository ------------------------------
    def model_config(self, model: str, version: str | None) -> dict[str, Any]:
        """The model as a Triton model configuration (tritonclient asks for it)."""
        served = self.dataplane.resolve(model, version)
        batching = served.batching
        labels = served.labels_file
        outputs = []
        for spec in served.outputs:
            doc = {
                "name": spec.name,
                "data_type": CONFIG_TYPES[spec.datatype],
                "dims": list(spec.shape),
            }
            if labels and served.is_classifier_output(spec.name):
                doc["label_filename"] = labels
            outputs.append(doc)
        return {
            "name": model,
            "platform": PLATFORMS[served.runtime_kind.value],
            "backend": served.runtime_kind.value,
            "max_batch_size": batching.max_batch_size,
            "input": [
                {"name": s.name, "data_type": CONFIG_TYPES[s.datatype], "dims": list(s.shape)}
                for s in served.inputs
            ],
            "output": outputs,
            "instance_group": [{"name": model, "kind": "KIND_CPU", "count": batching.instances}],
            "dynamic_batching": {
                "max_queue_delay_microseconds": int(batching.max_batch_delay_ms * 1000)
            },
            "default_model_filename": served.artifact.name,
        }

    def model_statistics(self, model: str | None, version: str | None) -> dict[str, Any]:
        models = [self.registry.describe(model)] if model else self.registry.catalog()
        stats = []
        for info in models:
            served = info.served_versions
            if version:
                found = info.served(version)
                if found is None:
                    raise VersionNotFound(f"model '{info.name}' has no loaded version '{version}'")
                served = [found]
            stats += [_statistics(info.name, v) for v in served]
        return {"model_stats": stats}

    def repository_index(self, ready_only: bool) -> list[dict[str, Any]]:
        return [
            _index_entry(info)
            for info in self.registry.catalog()
            if not ready_only or info.state is ModelState.READY
        ]

    async def load(self, model: str, parameters: dict[str, Any] | None = None) -> None:
        """Load the model from its folder; a load that leaves the model not serving
        is ModelLoadError with the reason. Triton's load parameters (a config
        override, uploaded files) are refused: a model's folder is its only source."""
        if parameters:
            raise InvalidInput(
                "load parameters (config overrides, files) are not supported: "
                "put the files in the model's folder and load it"
            )
        entry = await self.repository.load(model)
        if entry.state is ModelState.READY:
            return
        message = f"model '{model}' failed to load: {entry.reason}"
        if self.registry.describe(model).state is ModelState.READY:
            message += "; the versions loaded before keep serving"
        raise ModelLoadError(message)

    async def unload(self, model: str) -> None:
        await self.repository.unload(model)


def _inputs(tensors: list[V2Tensor]) -> dict[str, Array]:
    """The request's tensors by name; whether they fit the model is the validator's to say.
    A repeated name is the one rule only this protocol needs (inputs are a list here)."""
    inputs = {t.name: t.data for t in tensors}
    if len(inputs) != len(tensors):
        raise InvalidInput("an input is given twice")
    return inputs


def _classification(served: ServedVersion, output: str, k: Any) -> int:
    """The classification extension's class count for `output` (the validator checks k >= 1)."""
    if not served.is_classifier_output(output):
        raise InvalidInput(f"output '{output}' does not hold class scores")
    if isinstance(k, bool) or not isinstance(k, int):
        raise InvalidInput("the classification parameter must be a positive integer")
    return k


def _timeout_parameter(parameters: dict[str, Any]) -> int | None:
    """tritonclient's per-request `timeout` parameter (microseconds), in milliseconds.
    Where the transport has a deadline too (header, gRPC deadline), the tighter wins."""
    value = parameters.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInput("the timeout parameter must be a positive number of microseconds")
    return max(1, value // 1000)


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype.value, "shape": [-1, *spec.shape]}


def _classification_tensor(output: RequestedOutput, classes: list[Any], k: int) -> V2Tensor:
    """Triton's classification extension: "score:index:label" strings, best first."""
    rows = [
        [f"{c.confidence:f}:{c.class_id}:{c.label}".encode() for c in row[:k]] for row in classes
    ]
    width = max((len(row) for row in rows), default=0)  # k is capped at the number of classes
    data = np.empty((len(rows), width), dtype=object)
    for i, row in enumerate(rows):
        data[i, : len(row)] = row
    return V2Tensor(output.name, Datatype.BYTES, data.shape, data, output.parameters)


def _duration(counter: Counter) -> dict[str, int]:
    return {"count": counter.count, "ns": counter.ns}


def _statistics(model: str, served: VersionInfo) -> dict[str, Any]:
    stats = served.stats
    if stats is None:  # only served versions are counted
        raise VersionNotFound(f"model '{model}' version '{served.version}' is not loaded")
    return {
        "name": model,
        "version": served.version,
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _duration(stats.success),
            "fail": _duration(stats.fail),
            "queue": _duration(stats.queue),
            "compute_input": _duration(stats.compute_input),
            "compute_infer": _duration(stats.compute_infer),
            "compute_output": _duration(stats.compute_output),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": {"count": 0, "ns": 0},
                "compute_infer": _duration(counter),
                "compute_output": {"count": 0, "ns": 0},
            }
            for size, counter in sorted(stats.batch_sizes.items())
        ],
    }


def _index_entry(info: ModelInfo) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": info.name, "state": info.state.value}
    if info.default_version:
        doc["version"] = info.default_version
    if info.reason:
        doc["reason"] = info.reason
    return doc

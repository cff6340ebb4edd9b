"""The protocol's operations over the data plane, for both transports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import modelplex
from modelplex.core.dataplane import DataPlane
from modelplex.core.registry import ModelEntry, ModelState, ServedVersion, version_sort_key
from modelplex.core.stats import Counter
from modelplex.core.tensors import Array, Datatype, TensorSpec
from modelplex.core.types import InferenceRequest
from modelplex.errors import InvalidInput, ModelNotFound

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


class V2Service:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane
        self.registry = dataplane.registry

    # -- health and metadata -------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": SERVER_NAME,
            "version": modelplex.__version__,
            "extensions": list(EXTENSIONS),
        }

    def server_ready(self) -> bool:
        return self.registry.loaded.is_set()

    def model_ready(self, model: str, version: str | None) -> bool:
        return self.registry.is_ready(model, version)

    def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        served = self.dataplane.resolve(model, version)
        entry = self.registry.entry(model)
        return {
            "name": model,
            "versions": sorted(entry.versions, key=version_sort_key),
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
        inputs = self._inputs(served, request.inputs)
        wanted = request.outputs or [RequestedOutput(o.name) for o in served.outputs]
        known = {o.name: o for o in served.outputs}
        classes = 0
        for output in wanted:
            if output.name not in known:
                raise InvalidInput(f"unknown output '{output.name}'; the model has {sorted(known)}")
            k = output.parameters.get("classification")
            if k is not None:
                classes = max(classes, self._classification(served, output.name, k))
        result = await self.dataplane.infer(
            InferenceRequest(
                model=request.model,
                version=served.version,
                inputs=inputs,
                arrived_at=request.arrived_at,
                request_id=request.id or "",
                timeout_ms=request.timeout_ms,
                top_k=classes or None,
            )
        )
        tensors = []
        for output in wanted:
            k = output.parameters.get("classification")
            if k is not None and result.classes is not None:
                tensors.append(_classification_tensor(output, result.classes, int(k)))
                continue
            data = result.outputs[output.name]
            tensors.append(
                V2Tensor(
                    output.name, known[output.name].datatype, data.shape, data, output.parameters
                )
            )
        return V2Response(request.model, result.version, tensors, request.id)

    @staticmethod
    def _inputs(served: ServedVersion, tensors: list[V2Tensor]) -> dict[str, Array]:
        specs = {s.name: s for s in served.inputs}
        given = {t.name: t for t in tensors}
        if len(given) != len(tensors):
            raise InvalidInput("an input is given twice")
        unknown = sorted(set(given) - set(specs))
        if unknown:
            raise InvalidInput(f"unknown inputs {unknown}; the model takes {sorted(specs)}")
        missing = sorted(set(specs) - set(given))
        if missing:
            raise InvalidInput(f"missing inputs {missing}")
        arrays: dict[str, Array] = {}
        for name, tensor in given.items():
            spec = specs[name]
            if tensor.datatype is not spec.datatype:
                raise InvalidInput(
                    f"input '{name}' has datatype {tensor.datatype}; "
                    f"the model takes {spec.datatype}"
                )
            if len(tensor.shape) != len(spec.shape) + 1 or not spec.accepts_shape(tensor.shape[1:]):
                raise InvalidInput(
                    f"input '{name}' has shape {list(tensor.shape)}; the model takes "
                    f"{[-1, *spec.shape]}"
                )
            arrays[name] = tensor.data
        return arrays

    @staticmethod
    def _classification(served: ServedVersion, output: str, k: Any) -> int:
        if served.classifier is None or served.classifier.output != output:
            raise InvalidInput(f"output '{output}' does not hold class scores")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidInput("the classification parameter must be a positive integer")
        return int(k)

    # -- configuration, statistics, repository ------------------------------
    def model_config(self, model: str, version: str | None) -> dict[str, Any]:
        """The model as a Triton model configuration (tritonclient asks for it)."""
        served = self.dataplane.resolve(model, version)
        batching = served.batcher.settings()
        labels = served.config.classification.labels if served.config.classification else None
        outputs = []
        for spec in served.outputs:
            doc = {
                "name": spec.name,
                "data_type": CONFIG_TYPES[spec.datatype],
                "dims": list(spec.shape),
            }
            if labels and served.classifier is not None and spec.name == served.classifier.output:
                doc["label_filename"] = labels
            outputs.append(doc)
        return {
            "name": model,
            "platform": PLATFORMS[served.runtime_kind.value],
            "backend": served.runtime_kind.value,
            "max_batch_size": int(batching["max_batch_size"]),
            "input": [
                {"name": s.name, "data_type": CONFIG_TYPES[s.datatype], "dims": list(s.shape)}
                for s in served.inputs
            ],
            "output": outputs,
            "instance_group": [
                {"name": model, "kind": "KIND_CPU", "count": int(batching["instances"])}
            ],
            "dynamic_batching": {
                "max_queue_delay_microseconds": int(float(batching["max_batch_delay_ms"]) * 1000)
            },
            "default_model_filename": served.artifact.name,
        }

    def model_statistics(self, model: str | None, version: str | None) -> dict[str, Any]:
        entries = [self.registry.entry(model)] if model else self.registry.entries()
        stats = []
        for entry in entries:
            if version and version not in entry.versions:
                raise ModelNotFound(f"model '{entry.name}' has no loaded version '{version}'")
            versions = [entry.versions[version]] if version else list(entry.versions.values())
            stats += [_statistics(served) for served in versions]
        return {"model_stats": stats}

    def repository_index(self, ready_only: bool) -> list[dict[str, Any]]:
        index = []
        for entry in self.registry.entries():
            if ready_only and entry.state is not ModelState.READY:
                continue
            index.append(_index_entry(entry))
        return index

    async def load(self, model: str, parameters: dict[str, Any] | None = None) -> None:
        """Load the model from its folder. Triton's load parameters (a config
        override, uploaded files) are refused: a model's folder is its only source."""
        if parameters:
            raise InvalidInput(
                "load parameters (config overrides, files) are not supported: "
                "put the files in the model's folder and load it"
            )
        await self.registry.reload(model)

    async def unload(self, model: str) -> None:
        await self.registry.unload(model)


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


def _statistics(served: ServedVersion) -> dict[str, Any]:
    stats = served.stats
    return {
        "name": served.model,
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


def _index_entry(entry: ModelEntry) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": entry.name, "state": entry.state.value}
    if entry.default_version:
        doc["version"] = entry.default_version
    if entry.reason:
        doc["reason"] = entry.reason
    return doc

"""JSON instances in, JSON predictions out: the native (/v1) shape of model I/O.

Shared by the synchronous API and model jobs, so a job's result is exactly what
the predict endpoint would have answered.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelplex.core.registry import ServedVersion
from modelplex.core.tensors import Array, TensorSpec, row_to_json, to_tensor
from modelplex.core.types import ClassScore, InferenceResult
from modelplex.errors import InvalidInput


def instances_to_tensors(instances: list[Any], specs: tuple[TensorSpec, ...]) -> dict[str, Array]:
    """Instances (bare values for one-input models, else objects keyed by input) to columns."""
    names = {s.name for s in specs}
    if len(specs) == 1 and not _is_keyed(instances[0], names):
        return {specs[0].name: to_tensor(instances, specs[0])}
    columns: dict[str, list[Any]] = {s.name: [] for s in specs}
    for i, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise InvalidInput(
                f"instance {i} must be an object keyed by input name {sorted(names)}"
            )
        unknown = sorted(set(instance) - names)
        if unknown:
            raise InvalidInput(
                f"instance {i} has unknown fields {unknown}; inputs are {sorted(names)}"
            )
        missing = sorted(names - set(instance))
        if missing:
            raise InvalidInput(f"instance {i} is missing inputs {missing}")
        for name, value in instance.items():
            columns[name].append(value)
    return {s.name: to_tensor(columns[s.name], s) for s in specs}


_PREDICT_FIELDS = frozenset({"instance", "instances", "parameters"})
_PARAMETER_FIELDS = frozenset({"top_k", "outputs"})
_MAX_TOP_K_DIGITS = 6


def parse_top_k(raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        text = raw.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= _MAX_TOP_K_DIGITS):
            raise InvalidInput("top_k must be a positive integer")
        raw = int(text)
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
        raise InvalidInput("top_k must be a positive integer")
    return raw


class PredictOptions:
    __slots__ = ("outputs", "top_k")

    def __init__(self, top_k: int | None = None, outputs: list[str] | None = None) -> None:
        self.top_k = top_k
        self.outputs = outputs


def parse_predict_json(body: Any, served: ServedVersion) -> tuple[dict[str, Array], PredictOptions]:
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object with 'instance' or 'instances'")
    unknown = sorted(set(body) - _PREDICT_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown fields {unknown}; expected instance, instances, parameters")
    if ("instance" in body) == ("instances" in body):
        raise InvalidInput("send exactly one of 'instance' or 'instances'")
    if "instance" in body:
        instances = [body["instance"]]
    else:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise InvalidInput("'instances' must be a non-empty list")
    limit = served.batcher.max_queue_rows
    if len(instances) > limit:  # before converting thousands of rows only to refuse them
        raise InvalidInput(
            f"the request has {len(instances)} instances; "
            f"model '{served.model}' accepts at most {limit} per request"
        )
    options = parse_parameters(body.get("parameters"))
    return instances_to_tensors(instances, served.inputs), options


def parse_parameters(raw: Any) -> PredictOptions:
    if raw is None:
        return PredictOptions()
    if not isinstance(raw, dict):
        raise InvalidInput("'parameters' must be an object")
    unknown = sorted(set(raw) - _PARAMETER_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown parameters {unknown}; expected top_k, outputs")
    outputs = raw.get("outputs")
    if outputs is not None and (
        not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs)
    ):
        raise InvalidInput("parameters.outputs must be a list of output names")
    return PredictOptions(top_k=parse_top_k(raw.get("top_k")), outputs=outputs)


def _is_keyed(instance: Any, names: set[str]) -> bool:
    """An object naming at least one input is keyed; anything else is a bare value."""
    return isinstance(instance, dict) and not names.isdisjoint(instance)


def class_json(score: ClassScore) -> dict[str, Any]:
    return {"label": score.label, "class_id": score.class_id, "confidence": score.confidence}


def predictions_json(result: InferenceResult, top_k: int | None) -> list[dict[str, Any]]:
    """One prediction per instance: labelled classes for classifiers, else one key per output."""
    if result.classes is not None:
        predictions = []
        for row in result.classes:
            entry = class_json(row[0])
            if top_k is not None and top_k > 1:
                entry["top_k"] = [class_json(s) for s in row]
            predictions.append(entry)
        return predictions
    # orjson serialises only C-contiguous arrays; a model may return any layout.
    outputs = {name: np.ascontiguousarray(t) for name, t in result.outputs.items()}
    return [
        {name: row_to_json(tensor, i) for name, tensor in outputs.items()}
        for i in range(result.rows)
    ]

"""JSON instances in, JSON predictions out: the native (/v1) shape of model I/O.

Shared by the synchronous API and model jobs, so a job's result is exactly what
the predict endpoint would have answered.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, model_validator

from modelplex.core.envelopes import Envelope, JsonInt, parse
from modelplex.core.registry import ServedVersion
from modelplex.core.tensors import Array, TensorSpec, json_ready, row_to_json, to_tensor
from modelplex.core.types import ClassScore, InferenceResult
from modelplex.core.validation import check_row_count
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


class PredictParameters(Envelope):
    """What a prediction answers; a parameter the model cannot honour is refused."""

    top_k: JsonInt | None = Field(
        None,
        description="Classification models only: labelled classes per instance (at least 1).",
    )
    outputs: list[str] | None = Field(
        None,
        description="Outputs to return raw, by name (default: all; for a classification "
        "model, its labelled classes). Not together with top_k.",
    )

    @model_validator(mode="after")
    def _one_answer(self) -> PredictParameters:
        if self.top_k is not None and self.outputs is not None:
            raise ValueError(
                "send top_k (labelled classes) or outputs (raw outputs by name), not both"
            )
        return self


class PredictRequest(Envelope):
    """Exactly one of `instance` or `instances`.

    An instance is the value of the model's only input, or an object keyed by
    input name. BYTES values are UTF-8 strings or `{"b64": "..."}`.
    """

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["instance"]}, {"required": ["instances"]}]}
    )

    instance: Any = Field(None, description="One instance.")
    instances: list[Any] | None = Field(
        None, json_schema_extra={"minItems": 1}, description="A non-empty list of instances."
    )
    parameters: PredictParameters | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> PredictRequest:
        given = self.model_fields_set
        if ("instance" in given) == ("instances" in given):
            raise ValueError("send exactly one of 'instance' or 'instances'")
        if "instances" in given and not self.instances:
            raise ValueError("'instances' must be a non-empty list")
        return self

    @property
    def rows(self) -> list[Any]:
        return self.instances if self.instances is not None else [self.instance]

    @property
    def top_k(self) -> int | None:
        return self.parameters.top_k if self.parameters else None

    @property
    def outputs(self) -> list[str] | None:
        return self.parameters.outputs if self.parameters else None


def parse_predict_json(
    document: Any, served: ServedVersion
) -> tuple[dict[str, Array], PredictRequest]:
    """A decoded JSON predict body: its envelope, and its instances as tensors for
    `served` (decoded, not yet checked)."""
    body = parse(PredictRequest, document)
    rows = body.rows
    check_row_count(served, len(rows))  # before converting thousands of rows to refuse them
    return instances_to_tensors(rows, served.inputs), body


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
    outputs = {name: json_ready(t) for name, t in result.outputs.items()}
    return [
        {name: row_to_json(tensor, i) for name, tensor in outputs.items()}
        for i in range(result.rows)
    ]

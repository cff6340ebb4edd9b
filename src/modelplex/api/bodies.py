"""Every /v1 request body the HTTP API parses, declared once: the routes parse with
these classes and the OpenAPI document shows them. (The predict body lives in
`core.instances`, because model jobs carry one too.)

JSON bodies are strict about JSON's own types; form bodies (multipart, text
fields) read integers and JSON from text. Unknown fields are refused in both.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, Json, model_validator

from modelplex.core.envelopes import Envelope, FormInt, JsonInt
from modelplex.core.instances import PredictParameters
from modelplex.records import JobKind

MAX_PRIORITY = 100
CallbackEvent = Literal["job.step"]
"""Events sent on request (completion, failure and cancellation always are)."""


def _empty_is_none(value: Any) -> Any:
    return value or None  # an empty form field is an absent one


def _comma_separated(value: Any) -> Any:
    if isinstance(value, str):
        return [event.strip() for event in value.split(",") if event.strip()]
    return value


FormText = Annotated[str | None, BeforeValidator(_empty_is_none)]
Priority = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, description="Higher runs first.")


class ClassifyRequest(Envelope):
    """JSON body of POST /v1/classify."""

    image: str = Field(
        min_length=1, description="Base64 (or a data: URL) of a JPEG, PNG or WebP file."
    )
    top_k: JsonInt = Field(5, description="Classes to return (at least 1).")
    model: str | None = Field(None, description="Defaults to the server's classify_model.")
    version: str | None = None


class ClassifyForm(Envelope):
    """Multipart body of POST /v1/classify: one image file and the same options."""

    image: bytes = Field(description="A JPEG, PNG or WebP file.")
    top_k: FormInt = Field(5, description="Classes to return (at least 1).")
    model: FormText = Field(None, description="Defaults to the server's classify_model.")
    version: FormText = None


class PredictForm(Envelope):
    """Multipart predict, for models whose inputs are all BYTES: one file field per
    input, named after it (repeated for more instances), and an optional `top_k`."""

    model_config = ConfigDict(
        json_schema_extra={"additionalProperties": {"type": "string", "format": "binary"}}
    )

    top_k: FormInt | None = Field(None, description="Classes per instance (at least 1).")


class _Target(Envelope):
    """Exactly one of `model` or `pipeline` names what runs."""

    model: str | None = Field(None, min_length=1)
    pipeline: str | None = Field(None, min_length=1)
    version: str | None = Field(None, description="Model jobs: a version (default: the default).")

    @model_validator(mode="after")
    def _one_target(self) -> _Target:
        if (self.model is None) == (self.pipeline is None):
            raise ValueError("name exactly one of 'model' or 'pipeline'")
        return self

    @property
    def target(self) -> tuple[JobKind, str]:
        if self.model is not None:
            return JobKind.MODEL, self.model
        return JobKind.PIPELINE, str(self.pipeline)


class JobSubmit(_Target):
    """JSON body of POST /v1/jobs."""

    input: Any = Field(
        description="Model jobs: a /v1 predict body ({instance} or {instances}, parameters); "
        "pipelines: their input object, e.g. album-tagging's {images: [base64, ...]}, checked "
        "at submission against the schema the pipeline declares (GET /v1/pipelines, and "
        "this document's `PipelineInput.{pipeline}` components)."
    )
    callback_url: str | None = Field(
        None, description="Receives signed webhooks (Standard Webhooks)."
    )
    callback_events: list[CallbackEvent] = Field(
        default_factory=list,
        description="Extra events; completion, failure and cancellation are always sent.",
    )
    priority: JsonInt = Priority
    metadata: dict[str, Any] | None = Field(
        None, description="Yours; returned with the job and its webhooks."
    )


class JobSubmitForm(_Target):
    """Multipart body of POST /v1/jobs: a file (e.g. a zip of images) and the JSON
    body's other fields as text."""

    model: FormText = None
    pipeline: FormText = None
    version: FormText = None
    file: bytes = Field(
        description="The job's input file, for a pipeline that takes one (`input.upload` in "
        "GET /v1/pipelines); steps read it with read_upload(). Model jobs take JSON."
    )
    callback_url: FormText = None
    callback_events: Annotated[list[CallbackEvent], BeforeValidator(_comma_separated)] = Field(
        default_factory=list, description="Comma-separated."
    )
    priority: FormInt = Priority
    metadata: Json[dict[str, Any]] | None = Field(None, description="A JSON object, as text.")


class BatchFields(_Target):
    """A batch's target and options: form fields, or query parameters beside a JSONL body."""

    model: FormText = None
    pipeline: FormText = None
    version: FormText = None
    options: Json[PredictParameters] | None = Field(
        None, description="Model batches: top_k and outputs, as JSON text."
    )
    metadata: Json[dict[str, Any]] | None = Field(None, description="A JSON object, as text.")


class BatchForm(BatchFields):
    """Multipart body of POST /v1/batches."""

    file: bytes = Field(description='JSONL: one {"custom_id": "...", "input": ...} per line.')

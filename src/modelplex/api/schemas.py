"""Response shapes of the /v1 API, for the OpenAPI document.

Hot routes render JSON themselves (orjson: building pydantic objects per
response costs more than running a small model); these models are the contract
those routes keep, and the schema-driven tests check every response against
them. Request bodies are declared in `api.bodies` (and `core.instances`),
where the routes parse them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(examples=["https://modelplex.dev/problems/invalid-input"])
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable machine-readable error code.", examples=["INVALID_INPUT"])
    request_id: str
    instance: str | None = None


class ModelRef(BaseModel):
    name: str
    version: str


class ClassPrediction(BaseModel):
    label: str
    class_id: int
    confidence: float


class Timing(BaseModel):
    decode_ms: float
    preprocess_ms: float
    queue_wait_ms: float
    inference_ms: float
    postprocess_ms: float


class ModelVersionDetail(BaseModel):
    runtime: str
    artifact: str
    loaded_at: float
    is_default: bool


class Metadata(BaseModel):
    processing_time_ms: float
    timing: Timing | None = Field(None, description="verbose only")
    batch_size: int | None = Field(None, description="verbose only: rows in the model call")
    input_shape: dict[str, list[int]] | None = Field(None, description="verbose only")
    model_version: ModelVersionDetail | None = Field(None, description="verbose only")


class ClassifyResponse(BaseModel):
    """`minimal` detail returns only `predictions`."""

    id: str
    model: ModelRef
    predictions: list[ClassPrediction]
    metadata: Metadata


class InstancePrediction(BaseModel):
    """Classification models: label, class_id, confidence (and `top_k` when asked).
    Other models: one key per output."""

    model_config = ConfigDict(extra="allow")
    label: str | None = None
    class_id: int | None = None
    confidence: float | None = None
    top_k: list[ClassPrediction] | None = None


class PredictResponse(BaseModel):
    id: str
    model: ModelRef
    predictions: list[InstancePrediction]
    metadata: Metadata


class TensorSignature(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class BatchingSettings(BaseModel):
    max_batch_size: int
    max_batch_delay_ms: float
    max_queue_size: int
    instances: int


class VersionInfo(BaseModel):
    version: str
    state: Literal["READY", "FAILED"]
    runtime: str | None = None
    artifact: str | None = None
    loaded_at: float | None = None
    reason: str | None = None
    stats: dict[str, Any] | None = None


class ModelSummary(BaseModel):
    name: str
    state: Literal["LOADING", "READY", "FAILED", "UNAVAILABLE"]
    default_version: str | None
    versions: list[str]
    description: str = ""
    reason: str | None = None


class ModelDetail(ModelSummary):
    inputs: list[TensorSignature] | None = None
    outputs: list[TensorSignature] | None = None
    labels: list[str] | None = None
    batching: BatchingSettings | None = None
    timeout_ms: int | None = None
    preprocessing: dict[str, Any] | None = None
    version_details: list[VersionInfo] = []


class ModelList(BaseModel):
    models: list[ModelSummary]


class Health(BaseModel):
    status: Literal["ok", "ready", "loading"]
    models: dict[str, Any] | None = None


class Readiness(BaseModel):
    status: Literal["ready", "loading", "not_ready"]
    reason: str | None = None
    """Why the server is not ready (the readiness policy, docs/3-model-repository.md)."""
    models: dict[str, Any] | None = None
    auth: Literal["required", "disabled", "open"] | None = None
    """Whether requests need credentials (docs/9-security.md)."""


# -- jobs and batches -----------------------------------------------------------
class JobStep(BaseModel):
    name: str
    status: Literal["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]
    progress: float
    started_at: str | None = None
    finished_at: str | None = None
    error: dict[str, Any] | None = None


class JobError(BaseModel):
    code: str = Field(examples=["INPUT_DECODE_FAILED"])
    message: str
    step: str | None = None


class JobView(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    status: Literal["QUEUED", "PROCESSING", "COMPLETED", "FAILED", "CANCELLED"]
    version: str | None
    priority: int
    progress: float
    steps: list[JobStep]
    attempts: int
    max_attempts: int
    cancel_requested: bool
    created_at: str
    started_at: str | None
    finished_at: str | None
    metadata: dict[str, Any] | None
    result: Any = Field(None, description="COMPLETED jobs (null if large: see links.result)")
    error: JobError | None = Field(None, description="FAILED and CANCELLED jobs")
    history: list[dict[str, Any]]
    links: dict[str, str]


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None


class DeliveryAttempt(BaseModel):
    attempt: int
    at: str
    duration_ms: float
    status_code: int | None
    error: str | None


class Delivery(BaseModel):
    id: str = Field(description="The webhook-id header: the same on every retry.")
    event: str
    url: str
    status: Literal["PENDING", "DELIVERED", "FAILED"]
    created_at: str
    next_attempt_at: str | None
    attempts: list[DeliveryAttempt]


class DeliveryList(BaseModel):
    deliveries: list[Delivery]


class BatchCounts(BaseModel):
    total: int
    completed: int
    failed: int
    refused: int = Field(description="Of `failed`: lines refused at submission.")
    pending: int
    cancelled: int


class BatchRefusal(BaseModel):
    custom_id: str | None
    line: int
    error: dict[str, Any]


class BatchView(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    status: Literal["PROCESSING", "COMPLETED", "PARTIALLY_FAILED", "FAILED", "CANCELLED"] = Field(
        description="COMPLETED: every line succeeded; PARTIALLY_FAILED: some failed; "
        "FAILED: every line failed; CANCELLED: cancelled (finished once `finished_at` is set)."
    )
    counts: BatchCounts
    refusals: list[BatchRefusal] | None = Field(
        default=None,
        description="GET only: the first lines refused at submission (at most "
        "`refusals_shown`); every one is in the `errors` JSONL.",
    )
    progress: float
    created_at: str
    finished_at: str | None
    links: dict[str, str]


class PipelineStep(BaseModel):
    name: str
    kind: Literal["function", "model"]
    model: str | None
    timeout_s: float
    max_attempts: int


class PipelineInputSpec(BaseModel):
    """What a job for the pipeline takes, checked at submission."""

    schema_: dict[str, Any] = Field(
        alias="schema",
        description="JSON Schema of the job's JSON `input` (also in this document's "
        "components, as `PipelineInput.{pipeline}`).",
    )
    upload: bool = Field(description="Whether a file may be uploaded (multipart `file`) instead.")


class PipelineView(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    state: Literal["READY", "FAILED"]
    description: str
    reason: str | None
    input: PipelineInputSpec
    options: dict[str, Any] = Field(description="The pipeline's own settings, for its steps.")
    steps: list[PipelineStep]


class BatchList(BaseModel):
    batches: list[BatchView]
    next_cursor: str | None


class PipelineList(BaseModel):
    pipelines: list[PipelineView]

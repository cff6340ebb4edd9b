"""The one table that maps domain errors to the wire.

Every REST route, every RPC and every job error goes through `wire_error`: it
walks the exception's MRO, so a subclass without its own row inherits its
parent's. A row names the stable problem `code`, the status on `/v1` and on
the Open Inference Protocol's REST routes (the protocol answers bad requests
with 400 where `/v1` says 422), the gRPC status, and whether a job that failed
with it may be retried. Anything that is not a `ModelplexError` is INTERNAL and
its text never leaves the process. A model that raises is INTERNAL too
(`InferenceFailed` inherits the row): the client learns which model failed,
never the exception's text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from modelplex import errors


class GrpcCode(StrEnum):
    """gRPC status code names (the adapter resolves them to `grpc.StatusCode`)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True, slots=True)
class WireError:
    code: str
    """Stable problem code clients can switch on."""
    http_status: int
    """Status on /v1 (and every route outside the Open Inference Protocol)."""
    v2_status: int
    """Status on the Open Inference Protocol's REST routes (/v2)."""
    grpc_code: GrpcCode
    title: str
    retryable: bool = False
    """Whether a job that failed with this error may succeed if run again."""


def _row(
    code: str, http: int, v2: int, grpc: GrpcCode, title: str, *, retryable: bool = False
) -> WireError:
    return WireError(code, http, v2, grpc, title, retryable)


G = GrpcCode
_TABLE: dict[type[BaseException], WireError] = {
    errors.InvalidInput: _row("INVALID_INPUT", 422, 400, G.INVALID_ARGUMENT, "Invalid input"),
    errors.Unauthenticated: _row("UNAUTHENTICATED", 401, 401, G.UNAUTHENTICATED, "Unauthenticated"),
    errors.Forbidden: _row("FORBIDDEN", 403, 403, G.PERMISSION_DENIED, "Forbidden"),
    errors.NotFound: _row("NOT_FOUND", 404, 404, G.NOT_FOUND, "Not found"),
    errors.ModelNotFound: _row("MODEL_NOT_FOUND", 404, 404, G.NOT_FOUND, "Model not found"),
    errors.VersionNotFound: _row(
        "VERSION_NOT_FOUND", 404, 404, G.NOT_FOUND, "Model version not found"
    ),
    errors.PipelineNotFound: _row(
        "PIPELINE_NOT_FOUND", 404, 404, G.NOT_FOUND, "Pipeline not found"
    ),
    errors.JobNotFound: _row("JOB_NOT_FOUND", 404, 404, G.NOT_FOUND, "Job not found"),
    errors.BatchNotFound: _row("BATCH_NOT_FOUND", 404, 404, G.NOT_FOUND, "Batch not found"),
    errors.BlobNotFound: _row("BLOB_NOT_FOUND", 404, 404, G.NOT_FOUND, "Stored data not found"),
    errors.KeyNotFound: _row("KEY_NOT_FOUND", 404, 404, G.NOT_FOUND, "API key not found"),
    errors.Conflict: _row("CONFLICT", 409, 409, G.FAILED_PRECONDITION, "Conflict"),
    errors.IdempotencyConflict: _row(
        "IDEMPOTENCY_CONFLICT", 409, 409, G.FAILED_PRECONDITION, "Idempotency key conflict"
    ),
    errors.JobNotFinished: _row(
        "JOB_NOT_FINISHED", 409, 409, G.FAILED_PRECONDITION, "Job not finished"
    ),
    errors.JobFinished: _row("JOB_FINISHED", 409, 409, G.FAILED_PRECONDITION, "Job finished"),
    errors.JobCancelled: _row("CANCELLED", 409, 409, G.CANCELLED, "Cancelled"),
    errors.MethodNotAllowed: _row(
        "METHOD_NOT_ALLOWED", 405, 405, G.UNIMPLEMENTED, "Method not allowed"
    ),
    errors.ModelNotReady: _row(
        "MODEL_NOT_READY", 503, 503, G.UNAVAILABLE, "Model not ready", retryable=True
    ),
    # A pipeline loads once, at start-up: one that failed stays failed until a restart.
    errors.PipelineNotReady: _row(
        "PIPELINE_NOT_READY", 503, 503, G.UNAVAILABLE, "Pipeline not ready"
    ),
    errors.InferenceTimeout: _row(
        "INFERENCE_TIMEOUT", 504, 504, G.DEADLINE_EXCEEDED, "Inference timed out", retryable=True
    ),
    errors.StepTimeout: _row(
        "STEP_TIMEOUT", 504, 504, G.DEADLINE_EXCEEDED, "Step timed out", retryable=True
    ),
    # Its thread may still write: no retry may run beside it, in any worker.
    errors.StepStuck: _row("STEP_STUCK", 504, 504, G.DEADLINE_EXCEEDED, "Step stuck"),
    errors.ResourceExhausted: _row(
        "RESOURCE_EXHAUSTED", 503, 503, G.RESOURCE_EXHAUSTED, "Resource exhausted", retryable=True
    ),
    errors.Unavailable: _row(
        "SERVICE_UNAVAILABLE", 503, 503, G.UNAVAILABLE, "Service unavailable", retryable=True
    ),
    errors.PayloadTooLarge: _row(
        "PAYLOAD_TOO_LARGE", 413, 413, G.RESOURCE_EXHAUSTED, "Payload too large"
    ),
    errors.UnsupportedMediaType: _row(
        "UNSUPPORTED_MEDIA_TYPE", 415, 415, G.INVALID_ARGUMENT, "Unsupported media type"
    ),
    # A load call whose folder does not make a serving model: the repository's content,
    # not a server fault, and no retry helps until it is fixed (the protocol: 400).
    errors.ModelLoadError: _row(
        "MODEL_LOAD_FAILED", 422, 400, G.INVALID_ARGUMENT, "Model load failed"
    ),
    errors.PipelineLoadError: _row(
        "PIPELINE_LOAD_FAILED", 500, 500, G.INTERNAL, "Pipeline load failed"
    ),
    errors.ConfigurationError: _row(
        "CONFIGURATION_ERROR", 500, 500, G.INTERNAL, "Invalid configuration"
    ),
    errors.InternalError: _row("INTERNAL", 500, 500, G.INTERNAL, "Internal error"),
    # An unexpected exception in a step is often transient (a flaky dependency).
    errors.StepFailed: _row("STEP_FAILED", 500, 500, G.INTERNAL, "Step failed", retryable=True),
    errors.RunnerFailed: _row("INTERNAL", 500, 500, G.INTERNAL, "Internal error", retryable=True),
    errors.WorkerLost: _row("LEASE_EXPIRED", 500, 500, G.INTERNAL, "Worker lost"),
    # A poison job (one that kills every worker that runs it) must stop here.
    errors.WorkerCrashed: _row("WORKER_CRASHED", 500, 500, G.INTERNAL, "Worker crashed"),
    errors.ResultNotSerializable: _row(
        "RESULT_NOT_SERIALIZABLE", 500, 500, G.INTERNAL, "Result not serializable"
    ),
}

INTERNAL = _TABLE[errors.InternalError]


def wire_error(exc: BaseException | type[BaseException]) -> WireError:
    """The wire representation of `exc` (an exception or a class), found by walking its MRO."""
    cls = exc if isinstance(exc, type) else type(exc)
    for klass in cls.__mro__:
        found = _TABLE.get(klass)
        if found is not None:
            return found
    return INTERNAL


def public_message(exc: BaseException) -> str:
    """The message that may be shown to a client: never a foreign exception's text."""
    if isinstance(exc, errors.ModelplexError):
        return exc.message
    return INTERNAL.title


def rows() -> list[tuple[type[BaseException], WireError]]:
    """Every row of the table, for documentation and the OpenAPI document."""
    return list(_TABLE.items())

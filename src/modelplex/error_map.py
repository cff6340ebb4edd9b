"""The one table that maps domain errors to the wire.

Every REST route and every RPC goes through `wire_error`: it walks the
exception's MRO, so a subclass without its own row inherits its parent's.
Anything that is not a `ModelplexError` is INTERNAL and its text never leaves
the process. A model that raises is INTERNAL too (`InferenceFailed` inherits the
row): the client learns which model failed, never the exception's text.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from modelplex import errors


class GrpcCode(StrEnum):
    """gRPC status code names (the adapter resolves them to `grpc.StatusCode`)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    INTERNAL = "INTERNAL"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"


@dataclass(frozen=True, slots=True)
class WireError:
    code: str
    """Stable problem code clients can switch on."""
    http_status: int
    grpc_code: GrpcCode
    title: str


_TABLE: dict[type[BaseException], WireError] = {
    errors.InvalidInput: WireError(
        "INVALID_INPUT", 422, GrpcCode.INVALID_ARGUMENT, "Invalid input"
    ),
    errors.NotFound: WireError("NOT_FOUND", 404, GrpcCode.NOT_FOUND, "Not found"),
    errors.ModelNotFound: WireError("MODEL_NOT_FOUND", 404, GrpcCode.NOT_FOUND, "Model not found"),
    errors.VersionNotFound: WireError(
        "VERSION_NOT_FOUND", 404, GrpcCode.NOT_FOUND, "Model version not found"
    ),
    errors.PipelineNotFound: WireError(
        "PIPELINE_NOT_FOUND", 404, GrpcCode.NOT_FOUND, "Pipeline not found"
    ),
    errors.JobNotFound: WireError("JOB_NOT_FOUND", 404, GrpcCode.NOT_FOUND, "Job not found"),
    errors.BatchNotFound: WireError("BATCH_NOT_FOUND", 404, GrpcCode.NOT_FOUND, "Batch not found"),
    errors.Conflict: WireError("CONFLICT", 409, GrpcCode.FAILED_PRECONDITION, "Conflict"),
    errors.IdempotencyConflict: WireError(
        "IDEMPOTENCY_CONFLICT", 409, GrpcCode.FAILED_PRECONDITION, "Idempotency key conflict"
    ),
    errors.JobNotFinished: WireError(
        "JOB_NOT_FINISHED", 409, GrpcCode.FAILED_PRECONDITION, "Job not finished"
    ),
    errors.Unavailable: WireError(
        "SERVICE_UNAVAILABLE", 503, GrpcCode.UNAVAILABLE, "Service unavailable"
    ),
    errors.MethodNotAllowed: WireError(
        "METHOD_NOT_ALLOWED", 405, GrpcCode.UNIMPLEMENTED, "Method not allowed"
    ),
    errors.ModelNotReady: WireError(
        "MODEL_NOT_READY", 503, GrpcCode.UNAVAILABLE, "Model not ready"
    ),
    errors.InferenceTimeout: WireError(
        "INFERENCE_TIMEOUT", 504, GrpcCode.DEADLINE_EXCEEDED, "Inference timed out"
    ),
    errors.ResourceExhausted: WireError(
        "RESOURCE_EXHAUSTED", 503, GrpcCode.RESOURCE_EXHAUSTED, "Resource exhausted"
    ),
    errors.PayloadTooLarge: WireError(
        "PAYLOAD_TOO_LARGE", 413, GrpcCode.RESOURCE_EXHAUSTED, "Payload too large"
    ),
    errors.UnsupportedMediaType: WireError(
        "UNSUPPORTED_MEDIA_TYPE", 415, GrpcCode.INVALID_ARGUMENT, "Unsupported media type"
    ),
    errors.ModelLoadError: WireError(
        "MODEL_LOAD_FAILED", 500, GrpcCode.INTERNAL, "Model load failed"
    ),
    errors.InternalError: WireError("INTERNAL", 500, GrpcCode.INTERNAL, "Internal error"),
}

INTERNAL = _TABLE[errors.InternalError]


def wire_error(exc: BaseException) -> WireError:
    """The wire representation of `exc`, found by walking its MRO."""
    for cls in type(exc).__mro__:
        found = _TABLE.get(cls)
        if found is not None:
            return found
    return INTERNAL


def public_message(exc: BaseException) -> str:
    """The message that may be shown to a client: never a foreign exception's text."""
    if isinstance(exc, errors.ModelplexError):
        return exc.message
    return INTERNAL.title

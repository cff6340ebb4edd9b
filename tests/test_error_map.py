from __future__ import annotations

import pytest

from modelplex import errors
from modelplex.error_map import GrpcCode, public_message, wire_error


@pytest.mark.parametrize(
    ("error", "code", "status", "grpc"),
    [
        (errors.InvalidInput(), "INVALID_INPUT", 422, GrpcCode.INVALID_ARGUMENT),
        (errors.ModelNotFound(), "MODEL_NOT_FOUND", 404, GrpcCode.NOT_FOUND),
        (errors.VersionNotFound(), "VERSION_NOT_FOUND", 404, GrpcCode.NOT_FOUND),
        (errors.RouteNotFound(), "NOT_FOUND", 404, GrpcCode.NOT_FOUND),
        (errors.ModelNotReady(), "MODEL_NOT_READY", 503, GrpcCode.UNAVAILABLE),
        (errors.InferenceTimeout(), "INFERENCE_TIMEOUT", 504, GrpcCode.DEADLINE_EXCEEDED),
        (errors.ResourceExhausted(), "RESOURCE_EXHAUSTED", 503, GrpcCode.RESOURCE_EXHAUSTED),
        (errors.PayloadTooLarge(), "PAYLOAD_TOO_LARGE", 413, GrpcCode.RESOURCE_EXHAUSTED),
        (errors.UnsupportedMediaType(), "UNSUPPORTED_MEDIA_TYPE", 415, GrpcCode.INVALID_ARGUMENT),
        (errors.InferenceFailed(), "INTERNAL", 500, GrpcCode.INTERNAL),
        (errors.Unauthenticated(), "UNAUTHENTICATED", 401, GrpcCode.UNAUTHENTICATED),
        (ValueError("private"), "INTERNAL", 500, GrpcCode.INTERNAL),
    ],
)
def test_each_error_maps_by_mro(
    error: BaseException, code: str, status: int, grpc: GrpcCode
) -> None:
    wire = wire_error(error)
    assert (wire.code, wire.http_status, wire.grpc_code) == (code, status, grpc)


def test_default_messages_come_from_docstrings() -> None:
    assert errors.ModelNotFound().message == "The model does not exist."
    assert errors.ModelNotFound("model 'x' does not exist").message == "model 'x' does not exist"


def test_foreign_exception_text_is_never_public() -> None:
    assert public_message(KeyError("/etc/secret")) == "Internal error"


def test_unauthenticated_is_401_on_both_rest_surfaces_and_never_retried() -> None:
    wire = wire_error(errors.Unauthenticated("token expired"))
    assert (wire.http_status, wire.v2_status, wire.retryable) == (401, 401, False)
    assert public_message(errors.Unauthenticated("token expired")) == "token expired"

"""OpenAPI fragments for routes that parse their own bodies and path parameters.

Bodies are referenced by name: their schemas come from the envelope classes the
routes parse with (see `api.app.ModelplexApp.openapi`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from modelplex.error_map import wire_error

Responses = dict[int | str, dict[str, Any]]


def _grouped(error_classes: tuple[type[Exception], ...], v2: bool) -> dict[int, list[str]]:
    by_status: dict[int, list[str]] = {}
    for cls in error_classes:
        wire = wire_error(cls)
        status = wire.v2_status if v2 else wire.http_status
        if wire.code not in by_status.setdefault(status, []):
            by_status[status].append(wire.code)
    return dict(sorted(by_status.items()))


def problem_responses(*error_classes: type[Exception]) -> Responses:
    """Problem responses for these errors, with statuses and codes from the one error table."""
    return {
        status: {
            "description": "Problem details: " + ", ".join(codes),
            **json_content("Problem", "application/problem+json"),
        }
        for status, codes in _grouped(error_classes, v2=False).items()
    }


def v2_errors(*error_classes: type[Exception]) -> Responses:
    """The Open Inference Protocol's error object for these errors, at the protocol's
    statuses from the one error table."""
    return {
        status: {"description": "Error: " + ", ".join(codes), **json_content("V2Error")}
        for status, codes in _grouped(error_classes, v2=True).items()
    }


def json_content(schema: str, media: str = "application/json") -> dict[str, Any]:
    return {"content": {media: schema_ref(schema)}}


def no_content(description: str) -> dict[str, Any]:
    """A response with an empty body (the protocol's health and repository answers)."""
    return {"description": description, "content": {}}


def _body(content: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": content}}


def schema_ref(name: str) -> dict[str, Any]:
    return {"schema": {"$ref": f"#/components/schemas/{name}"}}


def optional_json_body(schema: str) -> dict[str, Any]:
    return {"requestBody": {"required": False, **json_content(schema)}}


V2_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": schema_ref("V2InferRequest"),
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "The JSON request, then the binary tensors "
                    "(Inference-Header-Content-Length: the JSON's length).",
                }
            },
        },
    }
}


BODY_PREDICT = _body(
    {
        "application/json": schema_ref("PredictRequest"),
        "multipart/form-data": schema_ref("PredictForm"),
    }
)
BODY_CLASSIFY = _body(
    {
        "application/json": schema_ref("ClassifyRequest"),
        "multipart/form-data": schema_ref("ClassifyForm"),
    }
)


def query_parameters(envelope: type[BaseModel]) -> list[dict[str, Any]]:
    """An envelope's fields as optional query parameters (a body's fields sent beside it)."""
    schema = envelope.model_json_schema(ref_template="#/components/schemas/{model}")
    parameters = []
    for name, field in schema.get("properties", {}).items():
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": False}
        parameter["schema"] = {k: v for k, v in field.items() if k not in ("title", "default")}
        if envelope.model_fields[name].description:
            parameter["description"] = envelope.model_fields[name].description
        parameters.append(parameter)
    return parameters


def _path(*names: str) -> list[dict[str, Any]]:
    # Hot routes read `request.path_params` themselves: declaring the parameters
    # as arguments costs FastAPI's parameter machinery ~8% of a small model's request.
    return [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in names
    ]


_HEADERS: list[dict[str, Any]] = [
    {
        "name": "X-Response-Detail",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "enum": ["minimal", "standard", "verbose"]},
        "description": "minimal: predictions only; verbose: timing breakdown, batch size, "
        "input shape and model version details. Default standard.",
    },
    {
        "name": "X-Request-Timeout-Ms",
        "in": "header",
        "required": False,
        "schema": {"type": "integer", "minimum": 1},
        "description": "Deadline for this request; the model's own timeout still applies.",
    },
]

V2_HEADERS: list[dict[str, Any]] = [
    _HEADERS[1],
    {
        "name": "Inference-Header-Content-Length",
        "in": "header",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
        "description": "Binary tensor extension: the length of the JSON before the tensors.",
    },
]

PARAMS = {
    "headers": _HEADERS,
    "model": [*_path("model"), *_HEADERS],
    "model_version": [*_path("model", "version"), *_HEADERS],
    "model_path": _path("model"),
    "model_version_path": _path("model", "version"),
}

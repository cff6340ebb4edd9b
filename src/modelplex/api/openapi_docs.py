"""OpenAPI fragments for routes that parse their own bodies and path parameters.

Bodies are referenced by name: their schemas come from the envelope classes the
routes parse with (see `api.app.ModelplexApp.openapi`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from modelplex.error_map import wire_error


def problem_responses(*error_classes: type[Exception]) -> dict[int | str, dict[str, Any]]:
    """Problem responses for these errors, with statuses from the one error table."""
    statuses = sorted({wire_error(cls()).http_status for cls in error_classes})
    return {
        status: {
            "description": "Problem details (application/problem+json)",
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
        for status in statuses
    }


def _body(content: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": content}}


def schema_ref(name: str) -> dict[str, Any]:
    return {"schema": {"$ref": f"#/components/schemas/{name}"}}


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

PARAMS = {
    "headers": _HEADERS,
    "model": [*_path("model"), *_HEADERS],
    "model_version": [*_path("model", "version"), *_HEADERS],
}

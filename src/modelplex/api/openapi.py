"""The OpenAPI document: FastAPI's, completed so that schema-driven tools can trust it.

* Request bodies that hot routes parse themselves are referenced by name; their
  schemas are added here from the same envelope classes the routes parse with.
* FastAPI documents a 422 `HTTPValidationError` on every route with
  parameters; modelplex never answers with that shape. On /v1 such an error is
  a problem+json document; on /v2 it cannot happen (path parameters are plain
  strings) and is removed.
* The error table (every code, its statuses and whether it is retryable) is
  part of the description, generated from `error_map`.
* Each loaded pipeline's input schema is a component, `PipelineInput.{name}`:
  what `input` must be in a job for that pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from modelplex import errors
from modelplex.api.openapi_docs import json_content
from modelplex.api.problems import is_v2_path
from modelplex.auth.access import OPEN_PATHS
from modelplex.error_map import rows, wire_error
from modelplex.jobs.pipelines import Pipeline, PipelineState

_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")


def build_document(app: FastAPI, body_schemas: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=f"{app.description}\n\n{error_table()}",
        routes=app.routes,
    )
    _, extra = models_json_schema(
        [(model, "validation") for model in body_schemas],
        ref_template="#/components/schemas/{model}",
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in extra.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    for path, operations in document["paths"].items():
        for operation in operations.values():
            _replace_fastapi_validation(path, operation)
            if path not in OPEN_PATHS:
                _secure(path, operation)
    document["components"]["securitySchemes"] = SECURITY_SCHEMES
    for name in _FASTAPI_VALIDATION:
        schemas.pop(name, None)
    return document


def with_pipeline_inputs(document: dict[str, Any], pipelines: Iterable[Pipeline]) -> dict[str, Any]:
    """`document` (left as it is) plus a component per ready pipeline's input schema."""
    added: dict[str, Any] = {}
    for pipeline in pipelines:
        if pipeline.state is not PipelineState.READY:
            continue
        name = f"PipelineInput.{pipeline.name}"
        if pipeline.input_model is None:
            schema = dict(pipeline.input_schema)
        else:
            schema = pipeline.input_model.model_json_schema(
                ref_template=f"#/components/schemas/{name}.{{model}}"
            )
            for nested, definition in schema.pop("$defs", {}).items():
                added[f"{name}.{nested}"] = definition
        upload = " (or upload a file)" if pipeline.accepts_upload else ""
        schema["description"] = (
            f"`input` of a job for pipeline '{pipeline.name}'{upload}. "
            + schema.get("description", "")
        ).strip()
        added[name] = schema
    if not added:
        return document
    components = dict(document.get("components", {}))
    components["schemas"] = {**components.get("schemas", {}), **added}
    return {**document, "components": components}


SECURITY_SCHEMES: dict[str, Any] = {
    "ApiKey": {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": "An API key (`mpx_...`, `modelplex keys create`).",
    },
    "Bearer": {
        "type": "http", "scheme": "bearer",
        "description": "An API key, or an OAuth2 / OpenID Connect access token (JWT).",
    },
}  # fmt: skip
"""How credentials are sent (docs/9-security.md); health, readiness and docs need none."""


def _secure(path: str, operation: dict[str, Any]) -> None:
    """Declare the credentials an operation takes and what it answers without them."""
    operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
    responses = operation.setdefault("responses", {})
    for error in (errors.Unauthenticated, errors.Forbidden):
        wire = wire_error(error)
        if is_v2_path(path):
            body = {"description": f"Error: {wire.code}", **json_content("V2Error")}
            responses.setdefault(str(wire.v2_status), body)
        else:
            problem = json_content("Problem", "application/problem+json")
            body = {"description": f"Problem details: {wire.code}", **problem}
            responses.setdefault(str(wire.http_status), body)
    if "401" in responses:
        responses["401"].setdefault(
            "headers",
            {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "`Bearer`"}},
        )


def _replace_fastapi_validation(path: str, operation: dict[str, Any]) -> None:
    responses = operation.get("responses", {})
    documented = responses.get("422", {})
    refs = str(documented.get("content", {}))
    if not any(name in refs for name in _FASTAPI_VALIDATION):
        return
    if is_v2_path(path):
        del responses["422"]
    else:
        responses["422"] = {
            "description": "Problem details: INVALID_INPUT",
            **json_content("Problem", "application/problem+json"),
        }


def error_table() -> str:
    """Every problem code a client can see, as a Markdown table."""
    lines = [
        "| code | /v1 status | /v2 status | gRPC status | retryable | meaning |",
        "|---|---|---|---|---|---|",
    ]
    seen: set[tuple[str, bool]] = set()
    for error_class, wire in rows():
        if (wire.code, wire.retryable) in seen:
            continue
        seen.add((wire.code, wire.retryable))
        meaning = (error_class.__doc__ or "").strip().splitlines()[0]
        lines.append(
            f"| `{wire.code}` | {wire.http_status} | {wire.v2_status} | {wire.grpc_code.value} "
            f"| {'yes' if wire.retryable else 'no'} | {meaning} |"
        )
    return "\n".join(lines)

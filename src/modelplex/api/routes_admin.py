"""`/v1/admin/keys`: API keys, managed over HTTP (scope `keys:admin`, checked at
the door like every scope). The key itself is in the answer of a create or a
rotate only; afterwards only its prefix is ever shown."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from modelplex import errors
from modelplex.api import payloads
from modelplex.api.deps import modelplex_of
from modelplex.api.openapi_docs import json_content, problem_responses
from modelplex.auth.keys import KeyManager, NewKey, key_view
from modelplex.auth.principal import Scope
from modelplex.core.envelopes import Envelope, parse

router = APIRouter()
JSON = "application/json"


class KeyCreate(Envelope):
    """JSON body of POST /v1/admin/keys."""

    name: str = Field(
        min_length=1, max_length=200, pattern=r"\S", description="What the key is for"
    )
    scopes: list[Scope] = Field(min_length=1, description='e.g. ["predict", "jobs:write"]')
    models: list[Annotated[str, Field(pattern=r"^[^\s:]+(:[^\s:]+)?$")]] | None = Field(
        None, description="Model allow-list (`digits`, `digits:*`, `digits:2`); null: every model"
    )
    expires_in: str | None = Field(
        None, pattern=r"^0*[1-9][0-9]{0,8}[smhdw]$",
        description="Lifetime: `30d`, `12h`, `90m`; null: none",
    )  # fmt: skip
    rate_limit: str | None = Field(
        None, pattern=r"^[0-9]{1,9}/(second|minute|hour|day)$",
        description="e.g. `50/second`; null: the default",
    )  # fmt: skip


class KeyView(BaseModel):
    id: str
    prefix: str
    name: str
    owner: str
    scopes: list[str]
    models: list[str] | None
    rate_limit: str | None
    state: str
    created_at: float
    expires_at: float | None
    last_used_at: float | None
    revoked_at: float | None


class NewKeyView(KeyView):
    key: str = Field(description="The key: shown this once, never again")


class KeyList(BaseModel):
    keys: list[KeyView]


REQUEST_SCHEMAS = (KeyCreate,)


def _json(document: Any, status: int = 200) -> Response:
    return Response(payloads.dumps(document), status_code=status, media_type=JSON)


def _keys(request: Request) -> KeyManager:
    return modelplex_of(request).keys


def _new(created: NewKey) -> dict[str, Any]:
    return {"key": created.key, **key_view(created.record)}


@router.post(
    "/v1/admin/keys",
    tags=["admin"],
    status_code=201,
    response_model=NewKeyView,
    summary="Create an API key (the key is in this answer only)",
    responses=problem_responses(errors.InvalidInput),
    openapi_extra={"requestBody": {"required": True, **json_content("KeyCreate")}},
)
async def create_key(request: Request) -> Response:
    body = await payloads.read_json(request, lambda doc: parse(KeyCreate, doc))
    created = await _keys(request).create(
        body.name, [scope.value for scope in body.scopes], models=body.models,
        expires_in=body.expires_in, rate_limit=body.rate_limit,
    )  # fmt: skip
    return _json(_new(created), 201)


@router.get("/v1/admin/keys", tags=["admin"], response_model=KeyList, summary="List API keys")
async def list_keys(request: Request) -> Response:
    return _json({"keys": [key_view(k) for k in await _keys(request).list()]})


@router.get(
    "/v1/admin/keys/{key_id}",
    tags=["admin"],
    response_model=KeyView,
    summary="An API key's record",
    responses=problem_responses(errors.KeyNotFound),
)
async def get_key(request: Request, key_id: str) -> Response:
    return _json(key_view(await _keys(request).get(key_id)))


@router.post(
    "/v1/admin/keys/{key_id}/revoke",
    tags=["admin"],
    response_model=KeyView,
    summary="Revoke an API key (every process refuses it within key_cache_ttl_s)",
    responses=problem_responses(errors.KeyNotFound),
)
async def revoke_key(request: Request, key_id: str) -> Response:
    record = await _keys(request).revoke(key_id)
    modelplex_of(request).auth.forget()
    return _json(key_view(record))


@router.post(
    "/v1/admin/keys/{key_id}/rotate",
    tags=["admin"],
    response_model=NewKeyView,
    summary="A new secret for an API key; the old one stops working",
    responses=problem_responses(errors.KeyNotFound, errors.InvalidInput),
)
async def rotate_key(request: Request, key_id: str) -> Response:
    created = await _keys(request).rotate(key_id)
    modelplex_of(request).auth.forget()
    return _json(_new(created))

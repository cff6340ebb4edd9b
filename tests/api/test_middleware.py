"""The request-context middleware on a bare Starlette app (for paths no route reaches)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from modelplex.api.middleware import RequestContextMiddleware


async def explode(request: Request) -> PlainTextResponse:
    raise RuntimeError("database password is hunter2")


async def echo(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


def call(route: Route, method: str, path: str, **kwargs: Any) -> httpx.Response:
    # Installed as in create_app: inside Starlette's ServerErrorMiddleware.
    app = Starlette(
        routes=[route], middleware=[Middleware(RequestContextMiddleware, max_body_bytes=100)]
    )

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_unhandled_exception_becomes_internal_problem() -> None:
    response = call(Route("/boom", explode), "GET", "/boom", headers={"X-Request-ID": "r-1"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "INTERNAL"
    assert body["request_id"] == "r-1"
    assert "hunter2" not in response.text


def test_body_limit_is_inclusive() -> None:
    route = Route("/echo", echo, methods=["POST"])
    assert call(route, "POST", "/echo", content=b"x" * 100).text == "100"
    rejected = call(route, "POST", "/echo", content=b"x" * 101)
    assert rejected.status_code == 413
    assert rejected.json()["code"] == "PAYLOAD_TOO_LARGE"

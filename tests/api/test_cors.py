"""CORS: off by default; `cors_allow_origins` lets those origins, and only those, in."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from modelplex.server import start
from tests.conftest import settings_for

ALLOWED = "https://app.example.com"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "Authorization, Content-Type, Idempotency-Key",
}


def names(header: str) -> set[str]:
    return {name.strip().lower() for name in header.split(",")}


@pytest.fixture(scope="module")
def cors_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    tmp = tmp_path_factory.mktemp("cors")
    (tmp / "repo").mkdir()
    settings = settings_for(tmp, cors_allow_origins=[ALLOWED])
    with start(settings, tmp / "repo") as server, httpx.Client(base_url=server.url) as http:
        yield http


def test_a_preflight_from_an_allowed_origin_gets_the_headers(cors_client: httpx.Client) -> None:
    response = cors_client.options("/v1/jobs", headers={"Origin": ALLOWED, **PREFLIGHT})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert set(response.headers["access-control-allow-methods"].split(", ")) == {
        "GET", "POST", "DELETE",
    }  # fmt: skip
    allowed = names(response.headers["access-control-allow-headers"])
    assert {"authorization", "x-api-key", "content-type", "idempotency-key", "x-request-id"} <= (
        allowed
    )


def test_an_allowed_origins_request_exposes_the_headers_it_needs(cors_client: httpx.Client) -> None:
    response = cors_client.get("/healthz", headers={"Origin": ALLOWED})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    exposed = names(response.headers["access-control-expose-headers"])
    assert exposed == {"x-request-id", "retry-after", "location"}


def test_a_disallowed_origin_gets_no_cors_headers(cors_client: httpx.Client) -> None:
    evil = "https://evil.example.net"
    preflight = cors_client.options("/v1/jobs", headers={"Origin": evil, **PREFLIGHT})
    # Refused, and without Access-Control-Allow-Origin a browser lets the page read nothing.
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    simple = cors_client.get("/healthz", headers={"Origin": evil})
    assert simple.status_code == 200
    assert not [h for h in simple.headers if h.startswith("access-control-")]


def test_cors_is_off_by_default(client: httpx.Client) -> None:
    preflight = client.options("/v1/jobs", headers={"Origin": ALLOWED, **PREFLIGHT})
    simple = client.get("/healthz", headers={"Origin": ALLOWED})
    for response in (preflight, simple):
        assert not [h for h in response.headers if h.startswith("access-control-")]
    assert preflight.status_code == 405  # no CORS layer answers it

"""The Python client and the CLI obtain, reuse and refresh client-credentials
tokens from a real authorisation server, and send API keys, as `Bearer`."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelplex.auth.jwt import JwtVerifier
from modelplex.client import ClientError, ModelplexClient
from modelplex.errors import Unauthenticated
from modelplex.oauth_client import ClientCredentials
from modelplex.settings import Settings
from tests.auth.issuer import AUDIENCE, Issuer, running_issuer
from tests.jobs.harness import serve_asgi
from tests.test_cli import run_cli


@dataclass
class Resource:
    """A server that answers `/v1/models` for a valid bearer token, recording each."""

    verifier: JwtVerifier | None
    api_key: str | None = None
    seen: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    url: str = ""

    async def models(self, request: Request) -> Response:
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        self.seen.append(credential)
        try:
            if scheme != "Bearer" or credential in self.revoked:
                raise Unauthenticated("no valid bearer credential")
            if self.verifier is None:
                if credential != self.api_key:
                    raise Unauthenticated("unknown key")
            else:
                await self.verifier.verify(credential)
        except Unauthenticated as exc:
            problem = {"code": "UNAUTHENTICATED", "detail": exc.message, "status": 401}
            return JSONResponse(problem, status_code=401)
        return JSONResponse({"models": []})


@contextmanager
def resource(verifier: JwtVerifier | None, api_key: str | None = None) -> Iterator[Resource]:
    server = Resource(verifier, api_key)
    app = Starlette(routes=[Route("/v1/models", server.models)])
    with serve_asgi(app) as url:
        server.url = url
        yield server


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with running_issuer(expires_in=2) as issuer:
        issuer.add_client("cli", "cli-secret", "predict jobs:read")
        yield issuer


def verifier(issuer: Issuer) -> JwtVerifier:
    found = JwtVerifier.from_settings(
        Settings(jwt_issuer=issuer.url, jwt_audience=AUDIENCE, jwt_jwks_url=issuer.jwks_url)
    )
    assert found is not None
    return found


def test_client_fetches_once_reuses_and_refreshes_after_expiry(issuer: Issuer) -> None:
    credentials = ClientCredentials(issuer.token_url, "cli", "cli-secret", scope="predict")
    with (
        resource(verifier(issuer)) as server,
        ModelplexClient(server.url, oauth=credentials) as client,
    ):
        assert client.list_models() == []
        assert client.list_models() == []
        assert issuer.token_requests == 1
        assert server.seen[0] == server.seen[1]
        time.sleep(2.1)  # the token's two seconds are over
        assert client.list_models() == []
        assert issuer.token_requests == 2
        assert server.seen[2] != server.seen[0]


def test_client_reads_oauth_settings_from_the_environment(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPLEX_OAUTH_TOKEN_URL", issuer.token_url)
    monkeypatch.setenv("MODELPLEX_OAUTH_CLIENT_ID", "cli")
    monkeypatch.setenv("MODELPLEX_OAUTH_CLIENT_SECRET", "cli-secret")
    monkeypatch.setenv("MODELPLEX_OAUTH_SCOPE", "jobs:read")
    with resource(verifier(issuer)) as server, ModelplexClient(server.url) as client:
        assert client.list_models() == []
    assert len(server.seen) == 1
    assert issuer.issued[-1]["scope"] == "jobs:read"


def test_wrong_client_secret_is_a_client_error(issuer: Issuer) -> None:
    credentials = ClientCredentials(issuer.token_url, "cli", "wrong")
    with (
        resource(verifier(issuer)) as server,
        ModelplexClient(server.url, oauth=credentials) as client,
    ):
        with pytest.raises(ClientError, match="access token") as caught:
            client.list_models()
        assert server.seen == []
        assert "invalid_client" in str(caught.value)


def test_a_refused_token_is_replaced_once(issuer: Issuer) -> None:
    credentials = ClientCredentials(issuer.token_url, "cli", "cli-secret")
    with (
        resource(verifier(issuer)) as server,
        ModelplexClient(server.url, oauth=credentials) as client,
    ):
        assert client.list_models() == []
        server.revoked.add(server.seen[0])
        assert client.list_models() == []
        assert issuer.token_requests == 2
        assert server.seen == [server.seen[0], server.seen[0], server.seen[2]]


def test_api_key_is_sent_as_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    with resource(None, api_key="mpx_test_key") as server:
        with ModelplexClient(server.url, api_key="mpx_test_key") as client:
            assert client.list_models() == []
        monkeypatch.setenv("MODELPLEX_API_KEY", "mpx_test_key")
        with ModelplexClient(server.url) as client:
            assert client.list_models() == []
        monkeypatch.setenv("MODELPLEX_API_KEY", "mpx_other")
        with ModelplexClient(server.url) as client, pytest.raises(ClientError) as caught:
            client.list_models()
        assert caught.value.code == "UNAUTHENTICATED"
    assert server.seen == ["mpx_test_key", "mpx_test_key", "mpx_other"]


def test_cli_obtains_a_token(issuer: Issuer) -> None:
    env = {
        **os.environ,
        "MODELPLEX_OAUTH_TOKEN_URL": issuer.token_url,
        "MODELPLEX_OAUTH_CLIENT_ID": "cli",
        "MODELPLEX_OAUTH_CLIENT_SECRET": "cli-secret",
    }
    with resource(verifier(issuer)) as server:
        done = run_cli("models", "list", "--url", server.url, env=env)
        assert done.returncode == 0, done.stderr
        assert issuer.token_requests == 1
        del env["MODELPLEX_OAUTH_TOKEN_URL"]
        env["MODELPLEX_API_KEY"] = "not-a-token"
        done = run_cli("models", "list", "--url", server.url, env=env)
        assert done.returncode == 1
        assert "UNAUTHENTICATED" in done.stderr
        assert "not-a-token" not in done.stderr

"""A real OAuth2 authorisation server for the tests, built on authlib: a
client-credentials token endpoint issuing RFC 9068 JWT access tokens, and a JWKS
endpoint whose keys rotate on demand. It runs over a real socket (`serve_asgi`)."""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    OAuth2Payload,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.jobs.harness import serve_asgi

# authlib refuses plain http unless told; the tests' issuer listens on loopback only.
os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")

AUDIENCE = "modelplex-tests"


@dataclass
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    secret: str
    scope: str

    def get_client_id(self) -> str:
        return self.client_id

    def check_client_secret(self, client_secret: str) -> bool:
        return client_secret == self.secret

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"

    def get_allowed_scope(self, scope: str) -> str:
        allowed = set(self.scope.split())
        return " ".join(s for s in (scope or self.scope).split() if s in allowed)


class _FormPayload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, form: dict[str, list[str]]) -> None:
        self._form = form

    @property
    def data(self) -> dict[str, str]:
        return {name: values[0] for name, values in self._form.items()}

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return defaultdict(list, self._form)


class _Request(OAuth2Request):  # type: ignore[misc]
    def __init__(self, request: Request, form: dict[str, list[str]]) -> None:
        super().__init__(request.method, str(request.url), headers=request.headers)
        self.payload = _FormPayload(form)
        self._form = form

    @property
    def form(self) -> dict[str, str]:
        return {name: values[0] for name, values in self._form.items()}


class _Tokens(JWTBearerTokenGenerator):  # type: ignore[misc]
    def __init__(self, issuer: Issuer) -> None:
        super().__init__(issuer="", expires_generator=lambda client, grant: issuer.expires_in)
        self._issuer = issuer

    def access_token_generator(self, client: Any, grant_type: str, user: Any, scope: str) -> str:
        self.issuer = self._issuer.url
        token = str(super().access_token_generator(client, grant_type, user, scope))
        # authlib's header names no `kid`; a JWKS consumer needs one to pick the key,
        # so the same claims are signed again with it.
        claims = jwt.decode(token, self._issuer.signing_key).claims
        key = self._issuer.signing_key
        return jwt.encode({"alg": self.alg, "typ": "at+jwt", "kid": key.kid}, claims, key)

    def get_jwks(self) -> RSAKey:
        return self._issuer.signing_key

    def get_audiences(self, client: Any, user: Any, scope: str) -> str:
        return AUDIENCE


class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, issuer: Issuer) -> None:
        super().__init__()
        self._issuer = issuer
        self.register_grant(ClientCredentialsGrant)
        self.register_token_generator("default", _Tokens(issuer))

    def query_client(self, client_id: str) -> Client | None:
        return self._issuer.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        self._issuer.issued.append(token)

    def create_oauth2_request(self, request: Any) -> Any:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> Response:
        return JSONResponse(body, status_code=status, headers=dict(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass


def _new_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": uuid.uuid4().hex, "use": "sig"})


@dataclass
class Issuer:
    url: str = ""
    expires_in: int = 300
    clients: dict[str, Client] = field(default_factory=dict)
    signing_key: RSAKey = field(default_factory=_new_key)
    issued: list[dict[str, Any]] = field(default_factory=list)
    jwks_requests: int = 0
    token_requests: int = 0

    @property
    def jwks_url(self) -> str:
        return f"{self.url}/jwks"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def add_client(self, client_id: str, secret: str, scope: str) -> Client:
        self.clients[client_id] = Client(client_id, secret, scope)
        return self.clients[client_id]

    def rotate(self) -> RSAKey:
        """A new signing key; the old one leaves the JWKS at once."""
        self.signing_key = _new_key()
        return self.signing_key

    def app(self) -> Starlette:
        server = _Server(self)

        async def token(request: Request) -> Response:
            self.token_requests += 1
            form: dict[str, list[str]] = defaultdict(list)
            for name, value in (await request.form()).multi_items():
                form[name].append(str(value))
            response: Response = server.create_token_response(_Request(request, form))
            return response

        async def jwks(request: Request) -> Response:
            self.jwks_requests += 1
            return JSONResponse({"keys": [self.signing_key.as_dict(private=False)]})

        return Starlette(
            routes=[
                Route("/token", token, methods=["POST"]),
                Route("/jwks", jwks, methods=["GET"]),
            ]
        )


@contextmanager
def running_issuer(*, expires_in: int = 300) -> Iterator[Issuer]:
    issuer = Issuer(expires_in=expires_in)
    with serve_asgi(issuer.app()) as url:
        issuer.url = url
        yield issuer

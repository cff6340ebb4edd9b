"""Credentials the Python client (and so the CLI) sends: an API key, or an OAuth2
access token it obtains itself with the client-credentials grant and refreshes
shortly before it expires.

Environment (read when the client is created without explicit credentials):
`MODELPLEX_OAUTH_TOKEN_URL`, `MODELPLEX_OAUTH_CLIENT_ID`,
`MODELPLEX_OAUTH_CLIENT_SECRET`, optional `MODELPLEX_OAUTH_SCOPE`; else
`MODELPLEX_API_KEY`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Mapping

import httpx

REFRESH_MARGIN_S = 30.0
"""A token is replaced this long before it expires (a fifth of its lifetime if shorter)."""

DEFAULT_LIFETIME_S = 300.0
"""Assumed lifetime of a token whose response names no `expires_in`."""


class OAuthError(Exception):
    """The token endpoint refused the client or could not be reached."""


class ClientCredentials:
    """An OAuth2 client-credentials grant with its token cached until near expiry."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | None = None,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.timeout_s = timeout_s
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ClientCredentials | None:
        env = os.environ if environ is None else environ
        url = env.get("MODELPLEX_OAUTH_TOKEN_URL")
        if not url:
            return None
        client_id = env.get("MODELPLEX_OAUTH_CLIENT_ID")
        secret = env.get("MODELPLEX_OAUTH_CLIENT_SECRET")
        if not client_id or not secret:
            raise OAuthError(
                "MODELPLEX_OAUTH_TOKEN_URL needs MODELPLEX_OAUTH_CLIENT_ID and "
                "MODELPLEX_OAUTH_CLIENT_SECRET"
            )
        return cls(url, client_id, secret, scope=env.get("MODELPLEX_OAUTH_SCOPE") or None)

    def token(self) -> str:
        """The current access token, fetched anew when none is cached or it is near expiry."""
        with self._lock:
            if self._token is None or self._clock() >= self._refresh_at:
                self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def _fetch(self) -> None:
        data = {"grant_type": "client_credentials"}
        if self.scope:
            data["scope"] = self.scope
        started = self._clock()
        try:
            response = httpx.post(
                self.token_url,
                data=data,
                auth=(self.client_id, self._secret),
                headers={"Accept": "application/json"},
                timeout=self.timeout_s,
            )
        except httpx.HTTPError as exc:
            raise OAuthError(f"cannot reach the token endpoint: {type(exc).__name__}") from None
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.is_error or not isinstance(document, dict):
            error = document.get("error") if isinstance(document, dict) else None
            raise OAuthError(f"token endpoint answered HTTP {response.status_code} ({error})")
        token = document.get("access_token")
        if not isinstance(token, str) or not token:
            raise OAuthError("token endpoint answered without an access_token")
        lifetime = document.get("expires_in")
        lifetime_s = float(lifetime) if isinstance(lifetime, int | float) else DEFAULT_LIFETIME_S
        self._token = token
        self._refresh_at = started + lifetime_s - min(REFRESH_MARGIN_S, lifetime_s / 5)


class BearerAuth(httpx.Auth):
    """Sends `Authorization: Bearer`: a fixed API key, or a client-credentials token
    (fetched again once when the server answers 401, e.g. after the issuer revoked it)."""

    def __init__(self, *, api_key: str | None = None, oauth: ClientCredentials | None = None):
        if (api_key is None) == (oauth is None):
            raise ValueError("exactly one of api_key and oauth")
        self._api_key = api_key
        self._oauth = oauth

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._credential()}"
        response = yield request
        if response.status_code == 401 and self._oauth is not None:
            self._oauth.invalidate()
            request.headers["Authorization"] = f"Bearer {self._credential()}"
            yield request

    def _credential(self) -> str:
        if self._oauth is not None:
            return self._oauth.token()
        assert self._api_key is not None
        return self._api_key


def auth_from(
    api_key: str | None = None,
    oauth: ClientCredentials | None = None,
    environ: Mapping[str, str] | None = None,
) -> BearerAuth | None:
    """The client's credentials: the explicit ones, else the environment's, else none."""
    if oauth is not None:
        return BearerAuth(oauth=oauth)
    if api_key:
        return BearerAuth(api_key=api_key)
    env = os.environ if environ is None else environ
    from_env = ClientCredentials.from_env(env)
    if from_env is not None:
        return BearerAuth(oauth=from_env)
    key = env.get("MODELPLEX_API_KEY")
    return BearerAuth(api_key=key) if key else None

"""REST's one enforcement point: credentials, the route's scope and the path's
model, checked by `RequestContextMiddleware` before any route runs (the
predict shortcut included). The principal goes into `scope["state"]`."""

from __future__ import annotations

from starlette.types import Scope

from modelplex.auth.access import OPEN_PATHS, require, require_model, rest_rule
from modelplex.auth.authenticator import Authenticator, credentials_from_headers
from modelplex.auth.principal import OPEN


class RestDoor:
    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def __call__(self, scope: Scope) -> None:
        """Set the request's principal; Unauthenticated or Forbidden if it may not pass."""
        state = scope.setdefault("state", {})
        path: str = scope.get("path", "")
        if not self.authenticator.mode.enforcing or path in OPEN_PATHS:
            state["principal"] = OPEN
            return
        authorization = api_key = None
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                authorization = value.decode("latin-1")
            elif key == b"x-api-key":
                api_key = value.decode("latin-1")
        principal = await self.authenticator.authenticate(
            credentials_from_headers(authorization, api_key)
        )
        rule, model, version = rest_rule(scope.get("method", "GET"), path)
        require(principal, rule.scope)
        if rule.addresses_model and model is not None:
            require_model(principal, model, version)
        state["principal"] = principal

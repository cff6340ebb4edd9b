"""Which scope each route needs, and the model allow-list check: the one table
both transports consult (REST in `AuthMiddleware`, gRPC in its interceptor).

A REST route not in the table needs `admin`: a route added without a row here
is closed, never open by accident (the route audit test also fails on it).
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from modelplex.auth.principal import OPEN, Principal, Scope
from modelplex.errors import Forbidden

OPEN_PATHS = frozenset(
    {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready",
     "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)  # fmt: skip
"""Answered without credentials: probes and the API's own documentation."""


@dataclass(frozen=True, slots=True)
class Rule:
    scope: Scope
    addresses_model: bool = False
    """The path's `{model}` (and `{version}`) must be in the allow-list."""


_M = r"(?P<model>[^/]+)"
_V = r"(?:/versions/(?P<version>[^/]+))?"
_P, _G = "POST", "GET"
_RULES: list[tuple[str, re.Pattern[str], Rule]] = [
    (_P, re.compile(rf"^/v1/models/{_M}{_V}/predict$"), Rule(Scope.PREDICT, True)),
    (_P, re.compile(rf"^/v2/models/{_M}{_V}/infer$"), Rule(Scope.PREDICT, True)),
    (_P, re.compile(r"^/v1/classify$"), Rule(Scope.PREDICT)),  # its model: in the route
    (_G, re.compile(r"^/v1/models$"), Rule(Scope.PREDICT)),
    (_G, re.compile(rf"^/v1/models/{_M}$"), Rule(Scope.PREDICT, True)),
    (_G, re.compile(r"^/v2/?$"), Rule(Scope.PREDICT)),
    (_G, re.compile(r"^/v2/models/stats$"), Rule(Scope.PREDICT)),
    (
        _G,
        re.compile(rf"^/v2/models/{_M}{_V}(?:/ready|/config|/stats)?$"),
        Rule(Scope.PREDICT, True),
    ),
    (_P, re.compile(r"^/v2/repository/index$"), Rule(Scope.MODELS_ADMIN)),
    (_P, re.compile(rf"^/v2/repository/models/{_M}/(?:load|unload)$"), Rule(Scope.MODELS_ADMIN)),
    (_G, re.compile(r"^/v1/pipelines(?:/[^/]+)?$"), Rule(Scope.PREDICT)),
    (_P, re.compile(r"^/v1/jobs$"), Rule(Scope.JOBS_WRITE)),  # its model: in the route
    (_P, re.compile(r"^/v1/jobs/[^/]+/cancel$"), Rule(Scope.JOBS_WRITE)),
    (_G, re.compile(r"^/v1/jobs(?:/.*)?$"), Rule(Scope.JOBS_READ)),
    (_P, re.compile(r"^/v1/batches$"), Rule(Scope.BATCHES_WRITE)),
    (_P, re.compile(r"^/v1/batches/[^/]+/cancel$"), Rule(Scope.BATCHES_WRITE)),
    (_G, re.compile(r"^/v1/batches(?:/.*)?$"), Rule(Scope.JOBS_READ)),
    (_G, re.compile(r"^/v1/admin/keys(?:/.*)?$"), Rule(Scope.KEYS_ADMIN)),
    (_P, re.compile(r"^/v1/admin/keys(?:/.*)?$"), Rule(Scope.KEYS_ADMIN)),
]
_DEFAULT = Rule(Scope.ADMIN)
_ROUTE_CACHE: dict[tuple[str, str], tuple[Rule, str | None, str | None]] = {}
_CACHE_MAX = 4096

GRPC_OPEN = frozenset({"ServerLive", "ServerReady"})
GRPC_SCOPES: dict[str, Scope] = {
    "ModelReady": Scope.PREDICT,
    "ServerMetadata": Scope.PREDICT,
    "ModelMetadata": Scope.PREDICT,
    "ModelInfer": Scope.PREDICT,
    "ModelStreamInfer": Scope.PREDICT,
    "ModelConfig": Scope.PREDICT,
    "ModelStatistics": Scope.PREDICT,
    "RepositoryIndex": Scope.MODELS_ADMIN,
    "RepositoryModelLoad": Scope.MODELS_ADMIN,
    "RepositoryModelUnload": Scope.MODELS_ADMIN,
}
"""Every RPC of GRPCInferenceService; one missing here needs `admin`."""


def rest_rule(method: str, path: str) -> tuple[Rule, str | None, str | None]:
    """The rule for a request, with the model and version its path names."""
    found = _ROUTE_CACHE.get((method, path))
    if found is not None:
        return found
    method_of = "GET" if method == "HEAD" else method
    found = (_DEFAULT, None, None)
    for wanted, pattern, rule in _RULES:
        if wanted == method_of and (match := pattern.match(path)):
            groups = match.groupdict()
            found = (rule, groups.get("model"), groups.get("version"))
            break
    if len(_ROUTE_CACHE) >= _CACHE_MAX:
        _ROUTE_CACHE.clear()  # paths carry model names and ids: the cache stays bounded
    _ROUTE_CACHE[(method, path)] = found
    return found


def require(principal: Principal, scope: Scope) -> None:
    if not principal.has_scope(scope):
        raise Forbidden(f"this request needs the {scope.value!r} scope")


def require_model(principal: Principal, model: str, version: str | None = None) -> None:
    """Forbidden unless the principal's allow-list admits `model` (at `version`)."""
    if not principal.may_use(model, version):
        raise Forbidden(f"these credentials may not use model {model!r}")


def principal_of(scope: MutableMapping[str, Any]) -> Principal:
    """The request's principal (set by the middleware; OPEN where it did not run)."""
    principal: Principal = scope.get("state", {}).get("principal", OPEN)
    return principal

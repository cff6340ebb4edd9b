"""The principal: who a request acts for, whatever proved it (an API key or a
bearer token), and what it may do. Transports resolve one per request and ask
it; nothing else in modelplex looks at credentials."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Scope(StrEnum):
    """The scopes of API-CONVENTIONS.md; `admin` holds every other."""

    PREDICT = "predict"
    JOBS_READ = "jobs:read"
    JOBS_WRITE = "jobs:write"
    BATCHES_WRITE = "batches:write"
    FEEDBACK_WRITE = "feedback:write"
    EXPERIMENTS_READ = "experiments:read"
    EXPERIMENTS_ADMIN = "experiments:admin"
    MODELS_ADMIN = "models:admin"
    REVIEW = "review"
    KEYS_ADMIN = "keys:admin"
    ADMIN = "admin"


class Credential(StrEnum):
    KEY = "key"
    JWT = "jwt"
    OPEN = "open"
    """No credentials: the server runs open (loopback without keys or an issuer,
    or `auth = "disabled"`); such a principal may do everything."""


@dataclass(frozen=True)
class Principal:
    subject: str
    """Who: an API key's id (`key_...`) or a token's `sub`; the owner of what the
    principal creates."""
    credential: Credential
    scopes: frozenset[str] = field(default_factory=frozenset)
    models: tuple[str, ...] | None = None
    """The model allow-list: `digits` or `digits:*` (every version of digits),
    `digits:2` (that version only); None: every model."""
    rate_limit: str | None = None
    """The principal's own rate limit (`50/second`), None: the settings' default."""

    def has_scope(self, scope: Scope | str) -> bool:
        if self.credential is Credential.OPEN:
            return True
        return Scope.ADMIN.value in self.scopes or str(scope) in self.scopes

    def may_use(self, model: str, version: str | None = None) -> bool:
        """Whether the allow-list admits `model` (at `version`; None: the version the
        request did not name, which only a whole-model entry admits)."""
        if self.models is None:
            return True
        for allowed in self.models:
            name, _, allowed_version = allowed.partition(":")
            if name == model and allowed_version in ("", "*", version):
                return True
        return False

    @property
    def is_admin(self) -> bool:
        return self.has_scope(Scope.ADMIN)


OPEN = Principal("anonymous", Credential.OPEN)
"""The principal of every request to a server that runs open."""

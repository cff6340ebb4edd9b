"""API keys: made, hashed and managed here, for the admin API and the CLI alike.

A key is `mpx_<prefix>_<secret>`: `mpx_` says what it is (secret scanners can
match it), the 8 hex digits of the prefix are shown in listings to tell keys
apart, and the secret is 32 random bytes. The database holds only
HMAC-SHA256(pepper, key). A key carries 256 bits of entropy, so nobody can guess
it from its hash whatever the hash's speed: a slow password KDF (bcrypt, argon2)
would only cost every request milliseconds. The pepper is a server-side secret
kept outside the database (a setting, or a file in the data directory), so a
stolen copy of the table is useless without it too.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any

from modelplex.auth.principal import Scope
from modelplex.errors import InvalidInput, KeyNotFound
from modelplex.ids import new_id
from modelplex.jobs.webhooks import load_or_create_secret
from modelplex.settings import Settings
from modelplex.storage.interface import ApiKey, ApiKeyStore

KEY_PREFIX = "mpx_"
_KEY_SHAPE = re.compile(r"^mpx_[0-9a-f]{8}_[A-Za-z0-9_\-]{43}$")
_RATE = re.compile(r"^\d+/(second|minute|hour|day)$")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def key_pepper(settings: Settings) -> bytes:
    """The configured pepper, or the one generated once into the data directory."""
    pepper = settings.key_pepper or load_or_create_secret(settings.data_dir / "key_pepper")
    return pepper.encode()


def digest(pepper: bytes, key: str) -> str:
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


def looks_like_key(token: str) -> bool:
    return _KEY_SHAPE.match(token) is not None


def new_key() -> tuple[str, str]:
    """A new key and its visible prefix."""
    prefix = KEY_PREFIX + secrets.token_hex(4)
    return f"{prefix}_{secrets.token_urlsafe(32)}", prefix


def parse_duration(text: str) -> float:
    """`30d`, `12h`, `90m`, `45s`, `2w` in seconds."""
    found = _DURATION.match(text.strip())
    if not found or int(found.group(1)) == 0:
        raise InvalidInput(f"invalid duration {text!r}: expected a number and s, m, h, d or w")
    return int(found.group(1)) * _UNIT_S[found.group(2)]


def _scopes(scopes: list[str]) -> tuple[str, ...]:
    known = {s.value for s in Scope}
    unknown = [s for s in scopes if s not in known]
    if unknown or not scopes:
        named = ", ".join(unknown) or "(none given)"
        raise InvalidInput(f"unknown scope(s) {named}; known: {', '.join(sorted(known))}")
    return tuple(dict.fromkeys(scopes))


@dataclass(frozen=True)
class NewKey:
    """A key as it is created or rotated: the only time the key itself is known."""

    key: str
    record: ApiKey


def key_view(record: ApiKey, now: float | None = None) -> dict[str, Any]:
    """A key's public record (no digest)."""
    now = time.time() if now is None else now
    state = "active"
    if record.revoked_at is not None:
        state = "revoked"
    elif record.expires_at is not None and record.expires_at <= now:
        state = "expired"
    return {
        "id": record.id, "prefix": record.prefix, "name": record.name, "owner": record.owner,
        "scopes": list(record.scopes),
        "models": None if record.models is None else list(record.models),
        "rate_limit": record.rate_limit, "state": state, "created_at": record.created_at,
        "expires_at": record.expires_at, "last_used_at": record.last_used_at,
        "revoked_at": record.revoked_at,
    }  # fmt: skip


class KeyManager:
    """Create, list, revoke and rotate keys on a store (the admin API and the CLI)."""

    def __init__(self, store: ApiKeyStore, pepper: bytes) -> None:
        self.store = store
        self.pepper = pepper

    async def create(
        self, name: str, scopes: list[str], *, models: list[str] | None = None,
        expires_in: str | None = None, rate_limit: str | None = None, owner: str | None = None,
    ) -> NewKey:  # fmt: skip
        if not name.strip():
            raise InvalidInput("a key needs a name")
        if rate_limit is not None and not _RATE.match(rate_limit):
            raise InvalidInput(f"invalid rate limit {rate_limit!r}: expected e.g. 50/second")
        now = time.time()
        key, prefix = new_key()
        key_id = new_id("key")
        record = ApiKey(
            id=key_id, prefix=prefix, digest=digest(self.pepper, key), name=name.strip(),
            owner=owner or key_id, scopes=_scopes(scopes),
            models=tuple(m for m in models if m) if models else None, rate_limit=rate_limit,
            created_at=now, expires_at=now + parse_duration(expires_in) if expires_in else None,
        )  # fmt: skip
        await self.store.create_api_key(record)
        return NewKey(key, record)

    async def list(self) -> list[ApiKey]:
        return await self.store.list_api_keys()

    async def get(self, key_id: str) -> ApiKey:
        record = await self.store.get_api_key(key_id)
        if record is None:
            raise KeyNotFound()
        return record

    async def revoke(self, key_id: str) -> ApiKey:
        record = await self.store.revoke_api_key(key_id, time.time())
        if record is None:
            raise KeyNotFound()
        return record

    async def rotate(self, key_id: str) -> NewKey:
        """A new secret for the same record (id, scopes, owner); the old key stops working."""
        key, prefix = new_key()
        record = await self.store.rotate_api_key(key_id, prefix, digest(self.pepper, key))
        if record is None:
            await self.get(key_id)  # KeyNotFound if there is none
            raise InvalidInput("a revoked key cannot be rotated")
        return NewKey(key, replace(record))

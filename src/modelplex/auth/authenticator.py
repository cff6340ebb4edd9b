"""The authenticator: request credentials in, a Principal out. Both transports
call this one object (REST's middleware, gRPC's interceptor).

Verified keys are cached for `key_cache_ttl_s` (5 s by default), so the hot
path costs an HMAC and a dict lookup, not a database read: a key revoked or
rotated elsewhere (another process, the CLI) stops working within that time.
Expiry is judged on every request from the cached record, so an expired key is
refused at once. A key's `last_used_at` is written at most once a minute per
key and process, never once per request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Protocol

from modelplex.auth.keys import digest, looks_like_key
from modelplex.auth.mode import AuthMode
from modelplex.auth.principal import OPEN, Credential, Principal
from modelplex.errors import ModelplexError, Unauthenticated
from modelplex.records import Clock
from modelplex.storage.interface import ApiKey, ApiKeyStore

log = logging.getLogger(__name__)

_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*$")
TOUCH_EVERY_S = 60.0
_CACHE_MAX = 10_000


class TokenVerifier(Protocol):
    """Verifies a bearer token that is a JWT (an OAuth2 / OpenID Connect access token)."""

    async def verify(self, token: str) -> Principal:
        """The token's principal; Unauthenticated for any token that does not verify."""
        ...


def looks_like_jwt(token: str) -> bool:
    return _JWT_SHAPE.match(token) is not None


def credentials_from_headers(authorization: str | None, api_key: str | None) -> str | None:
    """The token in `Authorization: Bearer <token>`, else `X-API-Key: <key>`."""
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
        return token.strip()
    if api_key:
        return api_key.strip()
    return None


class Authenticator:
    def __init__(
        self, store: ApiKeyStore, pepper: bytes, *, cache_ttl_s: float = 5.0,
        verifier: TokenVerifier | None = None, clock: Clock = time.time,
    ) -> None:  # fmt: skip
        self.store = store
        self.pepper = pepper
        self.cache_ttl_s = cache_ttl_s
        self.verifier = verifier
        self.mode = AuthMode.OPEN
        """Set once at start-up (`modelplex.auth.mode.decide_mode`)."""
        self._clock = clock
        self._cache: dict[str, tuple[ApiKey | None, Principal | None, float]] = {}
        self._reading: dict[str, asyncio.Future[ApiKey | None]] = {}
        self._touched: dict[str, float] = {}
        self._touching: set[asyncio.Task[None]] = set()

    async def authenticate(self, token: str | None) -> Principal:
        """The principal of a request carrying `token` (None: no credentials)."""
        if not self.mode.enforcing:
            return OPEN
        if token is None:
            raise Unauthenticated("credentials are required: send an API key or a bearer token")
        if looks_like_key(token):
            return await self._key_principal(token)
        if self.verifier is not None and looks_like_jwt(token):
            return await self.verifier.verify(token)
        raise Unauthenticated("the credentials are not valid")

    async def _key_principal(self, key: str) -> Principal:
        now = self._clock()
        hashed = digest(self.pepper, key)
        cached = self._cache.get(hashed)
        if cached is not None and now - cached[2] < self.cache_ttl_s:
            record, principal = cached[0], cached[1]
        else:
            record = await self._read(hashed)
            principal = None if record is None else _principal(record)
            if self.cache_ttl_s > 0:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()  # many distinct keys (or guesses): start afresh
                self._cache[hashed] = (record, principal, now)
        if record is None or principal is None or record.revoked_at is not None:
            raise Unauthenticated("the API key is not valid")
        if record.expires_at is not None and record.expires_at <= time.time():
            raise Unauthenticated("the API key has expired")
        self._touch(record.id, now)
        return principal

    async def _read(self, hashed: str) -> ApiKey | None:
        """The key's record; one read per key at a time: when its cache entry ends
        under load, the requests that find it ended wait for that read instead of
        each sending its own."""
        reading = self._reading.get(hashed)
        if reading is None:
            reading = asyncio.ensure_future(self.store.find_api_key(hashed))
            self._reading[hashed] = reading
            reading.add_done_callback(lambda _: self._reading.pop(hashed, None))
        return await asyncio.shield(reading)

    def _touch(self, key_id: str, now: float) -> None:
        if now - self._touched.get(key_id, float("-inf")) < TOUCH_EVERY_S:
            return
        self._touched[key_id] = now
        task = asyncio.create_task(self._write_touch(key_id, time.time()))
        self._touching.add(task)
        task.add_done_callback(self._touching.discard)

    async def _write_touch(self, key_id: str, at: float) -> None:
        try:
            await self.store.touch_api_key(key_id, at)
        except ModelplexError as exc:  # a use not recorded is no reason to refuse it
            log.warning("could not record the use of API key %s: %s", key_id, exc)

    def forget(self) -> None:
        """Drop cached keys (after this process revoked or rotated one)."""
        self._cache.clear()


def _principal(record: ApiKey) -> Principal:
    return Principal(
        subject=record.owner, credential=Credential.KEY, scopes=frozenset(record.scopes),
        models=record.models, rate_limit=record.rate_limit,
    )  # fmt: skip

"""API keys in the `MemoryStore` (the SQL store's `api_keys.py`)."""

from __future__ import annotations

from dataclasses import replace

from modelplex.records import Clock
from modelplex.storage.interface import ApiKey


class MemoryApiKeys:
    _api_keys: dict[str, ApiKey]
    _clock: Clock

    async def create_api_key(self, key: ApiKey) -> None:
        self._api_keys[key.id] = key

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        return self._api_keys.get(key_id)

    async def find_api_key(self, digest: str) -> ApiKey | None:
        return next((k for k in self._api_keys.values() if k.digest == digest), None)

    async def list_api_keys(self) -> list[ApiKey]:
        return sorted(self._api_keys.values(), key=lambda k: (k.created_at, k.id), reverse=True)

    async def count_api_keys(self) -> int:
        now = self._clock()
        return sum(
            1
            for k in self._api_keys.values()
            if k.revoked_at is None and (k.expires_at is None or k.expires_at > now)
        )

    async def revoke_api_key(self, key_id: str, at: float) -> ApiKey | None:
        key = self._api_keys.get(key_id)
        if key is None:
            return None
        if key.revoked_at is None:
            key = self._api_keys[key_id] = replace(key, revoked_at=at)
        return key

    async def rotate_api_key(self, key_id: str, prefix: str, digest: str) -> ApiKey | None:
        key = self._api_keys.get(key_id)
        if key is None or key.revoked_at is not None:
            return None
        key = self._api_keys[key_id] = replace(key, prefix=prefix, digest=digest)
        return key

    async def touch_api_key(self, key_id: str, at: float) -> None:
        key = self._api_keys.get(key_id)
        if key is not None:
            self._api_keys[key_id] = replace(key, last_used_at=at)

"""API keys on SQL: one row per key, found by its keyed hash (a unique index)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update

from modelplex.storage.interface import ApiKey
from modelplex.storage.sql.base import SqlBase
from modelplex.storage.sql.schema import api_keys


def _key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id, prefix=row.prefix, digest=row.digest, name=row.name, owner=row.owner,
        scopes=tuple(row.scopes), models=None if row.models is None else tuple(row.models),
        rate_limit=row.rate_limit, created_at=row.created_at, expires_at=row.expires_at,
        last_used_at=row.last_used_at, revoked_at=row.revoked_at,
    )  # fmt: skip


class ApiKeyQueries(SqlBase):
    async def create_api_key(self, key: ApiKey) -> None:
        values = {
            "id": key.id, "prefix": key.prefix, "digest": key.digest, "name": key.name,
            "owner": key.owner, "scopes": list(key.scopes),
            "models": None if key.models is None else list(key.models),
            "rate_limit": key.rate_limit, "created_at": key.created_at,
            "expires_at": key.expires_at, "last_used_at": None, "revoked_at": None,
        }  # fmt: skip
        async with self._tx() as conn:
            await conn.execute(insert(api_keys).values(**values))

    async def _one(self, *where: Any) -> ApiKey | None:
        async with self._read() as conn:
            row = (await conn.execute(select(api_keys).where(*where))).first()
        return None if row is None else _key(row)

    async def get_api_key(self, key_id: str) -> ApiKey | None:
        return await self._one(api_keys.c.id == key_id)

    async def find_api_key(self, digest: str) -> ApiKey | None:
        return await self._one(api_keys.c.digest == digest)

    async def list_api_keys(self) -> list[ApiKey]:
        statement = select(api_keys).order_by(api_keys.c.created_at.desc(), api_keys.c.id.desc())
        async with self._read() as conn:
            return [_key(row) for row in await conn.execute(statement)]

    async def count_api_keys(self) -> int:
        live = and_(
            api_keys.c.revoked_at.is_(None),
            or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > self._clock()),
        )
        async with self._read() as conn:
            return int(
                (
                    await conn.execute(select(func.count()).select_from(api_keys).where(live))
                ).scalar_one()
            )

    async def revoke_api_key(self, key_id: str, at: float) -> ApiKey | None:
        statement = (
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        async with self._tx() as conn:
            await conn.execute(statement)
        return await self.get_api_key(key_id)

    async def rotate_api_key(self, key_id: str, prefix: str, digest: str) -> ApiKey | None:
        statement = (
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(prefix=prefix, digest=digest)
        )
        async with self._tx() as conn:
            changed = (await conn.execute(statement)).rowcount
        return await self.get_api_key(key_id) if changed else None

    async def touch_api_key(self, key_id: str, at: float) -> None:
        async with self._tx() as conn:
            await conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=at)
            )

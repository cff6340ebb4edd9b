"""API keys on every store: created, found by digest, revoked, rotated, counted;
and, on SQL, the table holds no key in clear."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from modelplex.auth.keys import KeyManager, digest
from tests.fakeclock import FakeClock
from tests.storage.conftest import OpenStore

pytestmark = pytest.mark.anyio
PEPPER = b"test-pepper"


async def test_create_find_revoke_rotate_and_count(backend: OpenStore, clock: FakeClock) -> None:
    writer, reader = backend(), backend()
    manager = KeyManager(writer, PEPPER)
    created = await manager.create("ci", ["predict", "jobs:write"], models=["digits"])
    assert created.key.startswith(created.record.prefix + "_")
    found = await reader.find_api_key(digest(PEPPER, created.key))
    assert found is not None
    assert found.id == created.record.id
    assert found.scopes == ("predict", "jobs:write")
    assert found.models == ("digits",)
    assert await reader.count_api_keys() == 1
    assert [k.id for k in await reader.list_api_keys()] == [created.record.id]

    rotated = await manager.rotate(created.record.id)
    assert await reader.find_api_key(digest(PEPPER, created.key)) is None
    assert (await reader.find_api_key(digest(PEPPER, rotated.key))) is not None

    await reader.touch_api_key(created.record.id, 123.0)
    assert (await reader.get_api_key(created.record.id)).last_used_at == 123.0  # type: ignore[union-attr]

    revoked = await manager.revoke(created.record.id)
    assert revoked.revoked_at is not None
    assert await reader.count_api_keys() == 0
    assert await writer.rotate_api_key(created.record.id, "mpx_x", "d") is None
    assert await writer.revoke_api_key("key_missing", 1.0) is None


async def test_an_expired_key_is_not_counted(backend: OpenStore, clock: FakeClock) -> None:
    store = backend()
    created = await KeyManager(store, PEPPER).create("short", ["predict"], expires_in="1s")
    record = created.record
    assert record.expires_at is not None
    clock.now = record.expires_at + 1
    assert await store.count_api_keys() == 0


async def test_the_database_holds_no_key_in_clear(
    backend: OpenStore, store_url: str | None
) -> None:
    if store_url is None:
        pytest.skip("a memory store has no database")
    created = await KeyManager(backend(), PEPPER).create("ci", ["predict"])
    engine = create_async_engine(store_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT * FROM api_keys"))).all()
    finally:
        await engine.dispose()
    dumped = repr(rows)
    secret = created.key.split("_", 2)[2]
    assert created.key not in dumped
    assert secret not in dumped
    assert digest(PEPPER, created.key) in dumped

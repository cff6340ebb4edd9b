"""The authenticator's cache: a revoked key stops working within the TTL, an
expired one at once; a key's use is written at most once a minute."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelplex.auth.authenticator import Authenticator, looks_like_jwt
from modelplex.auth.keys import KeyManager
from modelplex.auth.mode import AuthMode
from modelplex.auth.principal import Credential, Principal
from modelplex.errors import Unauthenticated
from modelplex.storage.memory import MemoryStore
from tests.fakeclock import FakeClock

pytestmark = pytest.mark.anyio
PEPPER = b"pepper"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_revocation_takes_effect_within_the_ttl() -> None:
    store, clock = MemoryStore(), FakeClock()
    auth = Authenticator(store, PEPPER, cache_ttl_s=5.0, clock=clock)
    auth.mode = AuthMode.REQUIRED
    created = await KeyManager(store, PEPPER).create("a", ["predict"], models=["digits"])
    principal = await auth.authenticate(created.key)
    assert principal.subject == created.record.id
    assert principal.credential is Credential.KEY
    assert principal.may_use("digits")
    assert not principal.may_use("image-classifier")
    await store.revoke_api_key(created.record.id, time.time())
    clock.advance(4.0)
    await auth.authenticate(created.key)  # still cached
    clock.advance(1.5)
    with pytest.raises(Unauthenticated):
        await auth.authenticate(created.key)


async def test_use_is_recorded_at_most_once_a_minute() -> None:
    store, clock = MemoryStore(), FakeClock()
    auth = Authenticator(store, PEPPER, cache_ttl_s=0, clock=clock)
    auth.mode = AuthMode.REQUIRED
    created = await KeyManager(store, PEPPER).create("a", ["predict"])
    writes: list[float] = []
    touch = store.touch_api_key

    async def counting(key_id: str, at: float) -> None:
        writes.append(at)
        await touch(key_id, at)

    store.touch_api_key = counting  # type: ignore[method-assign]
    for _ in range(20):
        await auth.authenticate(created.key)
    clock.advance(61)
    await auth.authenticate(created.key)
    await asyncio.sleep(0)
    assert len(writes) == 2
    record = await store.get_api_key(created.record.id)
    assert record is not None
    assert record.last_used_at is not None


async def test_tokens_that_look_like_jwts_go_to_the_verifier() -> None:
    class Verifier:
        async def verify(self, token: str) -> Principal:
            if token != "a.b.c":
                raise Unauthenticated("bad token")
            return Principal("client-1", Credential.JWT, frozenset({"predict"}))

    auth = Authenticator(MemoryStore(), PEPPER, verifier=Verifier())
    auth.mode = AuthMode.REQUIRED
    assert (await auth.authenticate("a.b.c")).subject == "client-1"
    assert looks_like_jwt("eyJh.eyJz.c2ln")
    with pytest.raises(Unauthenticated):
        await auth.authenticate("a.b.d")
    with pytest.raises(Unauthenticated):
        await auth.authenticate(None)
    auth.mode = AuthMode.OPEN
    assert (await auth.authenticate(None)).credential is Credential.OPEN


async def test_requests_that_find_a_key_uncached_share_one_read() -> None:
    """Under load a key's cache entry ends while many requests carry it: one
    database read, not one per request in flight."""
    store, clock = MemoryStore(), FakeClock()
    auth = Authenticator(store, PEPPER, cache_ttl_s=5.0, clock=clock)
    auth.mode = AuthMode.REQUIRED
    created = await KeyManager(store, PEPPER).create("a", ["predict"])
    reads: list[str] = []
    find = store.find_api_key

    async def slow(digest: str) -> object:
        reads.append(digest)
        await asyncio.sleep(0.01)  # a database read takes a while
        return await find(digest)

    store.find_api_key = slow  # type: ignore[method-assign,assignment]
    for _ in range(2):  # a cold cache, then an ended entry
        found = await asyncio.gather(*(auth.authenticate(created.key) for _ in range(50)))
        assert {p.subject for p in found} == {created.record.id}
        clock.advance(6.0)
    assert len(reads) == 2

"""The model repository's generations, on every store: each load or unload call
counts one, and a handle of another process reads what the first wrote."""

from __future__ import annotations

import asyncio

import pytest

from modelplex.storage.interface import ModelGeneration, RepositoryAction
from tests.storage.conftest import OpenStore

pytestmark = pytest.mark.anyio


async def test_each_change_counts_one_generation_seen_by_every_handle(
    backend: OpenStore,
) -> None:
    writer, reader = backend(), backend()
    assert await reader.repository_generations() == {}
    assert await writer.record_repository_change("digits", RepositoryAction.LOAD) == 1
    assert await writer.record_repository_change("digits", RepositoryAction.UNLOAD) == 2
    assert await writer.record_repository_change("doubler", RepositoryAction.LOAD) == 1
    assert await reader.repository_generations() == {
        "digits": ModelGeneration("digits", 2, RepositoryAction.UNLOAD),
        "doubler": ModelGeneration("doubler", 1, RepositoryAction.LOAD),
    }


async def test_concurrent_changes_each_get_their_own_generation(backend: OpenStore) -> None:
    handles = [backend() for _ in range(4)]
    counted = await asyncio.gather(
        *(h.record_repository_change("digits", RepositoryAction.LOAD) for h in handles)
    )
    assert sorted(counted) == [1, 2, 3, 4]


async def test_a_reader_that_has_read_an_idle_database_still_sees_the_next_change(
    backend: OpenStore,
) -> None:
    """On SQLite an idle read is answered from the files' state; a change made after
    it by another handle must still be read."""
    writer, reader = backend(), backend()
    await writer.record_repository_change("digits", RepositoryAction.LOAD)
    await asyncio.sleep(1.1)  # the files' last write is now old enough to trust a read
    for _ in range(2):  # the first read is trusted, the second answered from it
        assert (await reader.repository_generations())["digits"].generation == 1
    await writer.record_repository_change("digits", RepositoryAction.UNLOAD)
    assert await reader.repository_generations() == {
        "digits": ModelGeneration("digits", 2, RepositoryAction.UNLOAD)
    }

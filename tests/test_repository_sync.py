"""`RepositorySync`: what one process's load and unload calls do to the others'
registries, over one store (a server's eager registry, a worker's lazy one)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from modelplex.core.catalog import ModelState
from modelplex.core.registry import ModelRegistry
from modelplex.errors import StoreUnavailable
from modelplex.repository_sync import RepositorySync
from modelplex.settings import Settings
from modelplex.storage.interface import RepositoryAction
from modelplex.storage.memory import MemoryStore
from tests.conftest import settings_for
from tests.helpers import copy_model

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def repo(example_repo: Path, tmp_path: Path) -> Path:
    repository = tmp_path / "repo"
    for name in ("digits", "image-classifier"):
        folder = copy_model(example_repo, name, repository)
        toml = folder / "model.toml"
        toml.write_text(re.sub(r"(?m)^default_version = .*$", "", toml.read_text()))
    return repository


def _sync(repo: Path, settings: Settings, store: MemoryStore, *, lazy: bool) -> RepositorySync:
    registry = ModelRegistry(repo, settings, serves_sync=not lazy)
    registry.load_all(lazy=lazy)
    return RepositorySync(registry, store, poll_s=1.0)


async def test_a_lazy_worker_follows_only_what_it_holds(repo: Path, tmp_path: Path) -> None:
    settings, store = settings_for(tmp_path), MemoryStore()
    server, worker = (_sync(repo, settings, store, lazy=lazy) for lazy in (False, True))
    await worker.baseline()
    worker.registry.ensure_loaded("digits")  # the worker ran a digits job
    try:
        shutil.copytree(repo / "digits" / "2", repo / "digits" / "3")
        shutil.copytree(repo / "image-classifier" / "1", repo / "image-classifier" / "2")
        await server.load("digits")
        await server.load("image-classifier")
        assert not worker.registry.has_version("digits", "3")
        assert await worker.catch_up()
        assert worker.registry.has_version("digits", "3")
        # Never used here: not loaded now, read as it is on its first job.
        assert not worker.registry.has_version("image-classifier", "1")
        worker.registry.ensure_loaded("image-classifier")
        assert worker.registry.has_version("image-classifier", "2")
        assert not await worker.catch_up()  # nothing new: nothing done

        await server.unload("digits")
        assert await worker.catch_up()
        assert worker.registry.describe("digits").state is ModelState.UNAVAILABLE
        await server.load("digits")
        assert await worker.catch_up()
        assert worker.registry.describe("digits").state is ModelState.READY

        shutil.copytree(repo / "digits", repo / "digits-copy")  # a new model folder
        await server.load("digits-copy")
        assert await worker.catch_up()
        assert worker.registry.describe("digits-copy").state is ModelState.READY  # on first use
    finally:
        await server.registry.close()
        await worker.registry.close()


async def test_a_process_that_starts_after_an_unload_does_not_serve_the_model(
    repo: Path, tmp_path: Path
) -> None:
    """The folder is still on disk: the start reads it, the first poll unloads it,
    as every process that was running when the unload was called did."""
    settings, store = settings_for(tmp_path), MemoryStore()
    server = _sync(repo, settings, store, lazy=False)
    restarted: RepositorySync | None = None
    try:
        await server.unload("digits")
        await server.load("image-classifier")
        restarted = RepositorySync(ModelRegistry(repo, settings), store, poll_s=1.0)
        await restarted.baseline()
        restarted.registry.load_all()
        assert restarted.registry.describe("digits").state is ModelState.READY  # from disk
        assert await restarted.catch_up()
        assert restarted.registry.describe("digits").state is ModelState.UNAVAILABLE
        assert restarted.registry.describe("image-classifier").state is ModelState.READY
        assert not await restarted.catch_up()  # followed once, not at every poll
    finally:
        await server.registry.close()
        if restarted is not None:
            await restarted.registry.close()


class _FlakyStore(MemoryStore):
    """A job store whose writes of repository changes fail while `down` (an outage
    of the job database, which cannot be staged here any other way)."""

    down = False

    async def record_repository_change(self, model: str, action: RepositoryAction) -> int:
        if self.down:
            raise StoreUnavailable("the job database is unavailable")
        return await super().record_repository_change(model, action)


async def test_a_change_made_while_the_store_is_down_reaches_the_others_once_it_is_back(
    repo: Path, tmp_path: Path
) -> None:
    settings, store = settings_for(tmp_path), _FlakyStore()
    server, other = (_sync(repo, settings, store, lazy=False) for _ in range(2))
    try:
        await other.baseline()
        store.down = True
        await server.unload("digits")  # answered: this process did unload it
        assert server.registry.describe("digits").state is ModelState.UNAVAILABLE
        assert not await other.catch_up()  # nobody was told yet
        store.down = False
        await server.catch_up()  # a poll of the process that made the change
        assert await other.catch_up()
        assert other.registry.describe("digits").state is ModelState.UNAVAILABLE
    finally:
        await server.registry.close()
        await other.registry.close()

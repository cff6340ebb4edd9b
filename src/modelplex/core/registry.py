"""The model registry: which models and versions exist, their state, and lookup.

Loading reads the repository folder by folder (`loader.VersionLoader`). A
folder that fails (bad model.toml, missing artefact, signature that does not
match the graph) is recorded as FAILED with its reason; it never stops the others.
A reload that fails leaves a serving model as it was (Triton's rule too): a typo
in a folder being edited never takes down the versions that were serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from modelplex.core.catalog import ModelInfo, ModelState, Readiness, version_sort_key
from modelplex.core.loader import NAME, VersionLoader
from modelplex.core.queueing import LOW_PRIORITY_SHARE
from modelplex.core.served import ModelEntry, ServedVersion
from modelplex.errors import ModelNotFound, ModelNotReady, VersionNotFound
from modelplex.executors import Pool
from modelplex.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["ModelRegistry", "ModelState", "ServedVersion", "version_sort_key"]

DRAIN_S = 10.0
"""How long a replaced or unloaded version may finish the requests it accepted."""
PIPELINE_FILE = "pipeline.toml"


class ModelRegistry:
    def __init__(
        self,
        repository: Path,
        settings: Settings,
        loads: Pool | None = None,
        *,
        serves_sync: bool = True,
    ) -> None:
        """`loads`: the bounded pool reloads run on (`Executors.loads`): one full is
        RESOURCE_EXHAUSTED at once, so load calls cannot pile up threads.
        `serves_sync`: whether synchronous requests reach these models (a job
        worker's registry serves none, so jobs may fill the models' whole queues)."""
        self.repository = repository
        self._loads = loads
        self._strict = settings.strict_readiness
        self._loader = VersionLoader(
            settings, sync_share=LOW_PRIORITY_SHARE if serves_sync else 1.0
        )
        self._models: dict[str, ModelEntry] = {}
        self._replaced: list[ModelEntry | None] = []
        self._lock = threading.Lock()
        self._deferred: dict[str, threading.Lock] = {}
        """Lazy mode: folders not loaded yet, each with the lock its first load takes."""
        self.loaded = threading.Event()
        """Set once the initial load of the whole repository has finished."""
        self._lazy = False

    # -- loading ---------------------------------------------------------
    def load_all(self, *, lazy: bool = False) -> None:
        """Load every model folder; failures are recorded, never raised. `lazy`
        (a job worker): only list the folders; each loads on its first lookup
        (or `ensure_loaded`), so a worker holds only the models its jobs use."""
        self._lazy = lazy
        try:
            if not self.repository.is_dir():
                log.error("model repository %s does not exist", self.repository)
                return
            self.discover(lazy=lazy)
            if not lazy:
                for folder in self.model_folders():
                    self.load_model(folder.name)
        finally:
            self.loaded.set()

    def discover(self, *, lazy: bool = False) -> None:
        """List the model folders as LOADING entries (quick, no model is read), so a
        request that arrives before its model has loaded hears MODEL_NOT_READY,
        not MODEL_NOT_FOUND."""
        if not self.repository.is_dir():
            return
        for folder in self.model_folders():
            with self._lock:
                if folder.name not in self._models:
                    self._models[folder.name] = ModelEntry(folder.name, folder)
                    if lazy:
                        self._deferred[folder.name] = threading.Lock()

    def ensure_loaded(self, name: str) -> bool:
        """Load a deferred folder now (blocking; once, however many callers ask);
        whether this call loaded it."""
        with self._lock:
            gate = self._deferred.get(name)
        if gate is None:
            return False
        with gate:
            with self._lock:
                if name not in self._deferred:
                    return False  # another caller loaded it meanwhile
            self.load_model(name)
            with self._lock:
                self._deferred.pop(name, None)
        return True

    def model_folders(self) -> list[Path]:
        """Folders that hold models (pipelines, hidden and `_` folders excluded)."""
        return sorted(
            p
            for p in self.repository.iterdir()
            if p.is_dir() and not p.name.startswith((".", "_")) and not (p / PIPELINE_FILE).exists()
        )

    def load_model(self, name: str) -> ModelEntry:
        """(Re)read one model folder; the entry is published only once fully built,
        so requests never see a half-loaded model. The entry it replaces is
        closed by `reload`. A FAILED entry never replaces a READY one: it is
        returned (the outcome of the load) and closed instead."""
        entry = self._loader.build_entry(name, self.repository / name)
        with self._lock:
            old = self._models.get(name)
            serving = old is not None and old.state is ModelState.READY
            if serving and entry.state is ModelState.FAILED:
                log.error("model %s: reload failed, the loaded versions keep serving", name)
                self._replaced.append(entry)  # a version it did load must be closed
            else:
                self._replaced.append(old)
                self._models[name] = entry
            self._deferred.pop(name, None)
        return entry

    async def reload(self, name: str) -> ModelEntry:
        """Load (or load again) one model folder while the server runs: a new
        version folder is served without a restart. The old versions keep
        answering until the new entry is published, then drain and close.
        The entry returned says how the load went (FAILED: with its reason)."""
        folder = self.repository / name
        if not NAME.match(name) or not folder.is_dir():
            raise ModelNotFound(f"model '{name}' is not in the repository")
        if (folder / PIPELINE_FILE).exists():  # never a model entry: /v1/pipelines lists it
            raise ModelNotFound(f"'{name}' is a pipeline, not a model")
        if self._loads is None:
            entry = await asyncio.to_thread(self.load_model, name)
        else:
            entry = await self._loads.run(self.load_model, name)
        await self._close_replaced()
        return entry

    async def unload(self, name: str) -> None:
        """Stop serving a model: later requests get MODEL_NOT_READY."""
        with self._lock:  # read and replace at once: a concurrent reload cannot slip between
            old = self._models.get(name)
            if old is None:
                raise ModelNotFound(f"model '{name}' does not exist")
            unavailable = ModelEntry(name=name, path=old.path, state=ModelState.UNAVAILABLE)
            unavailable.reason, unavailable.config = "unloaded", old.config
            self._models[name] = unavailable
            self._deferred.pop(name, None)  # a lazy registry must not load it on next use
            self._replaced.append(old)
        await self._close_replaced()

    async def follow(self, name: str, *, unloaded: bool) -> None:
        """Do what another process's load or unload call did to `name`. A lazy
        registry (a job worker) reloads only what it holds: a model it never loaded
        is read as it is now on its first use."""
        with self._lock:
            known, deferred = name in self._models, name in self._deferred
        if unloaded:
            if known:
                await self.unload(name)
            return
        if deferred or (self._lazy and not known):
            await asyncio.to_thread(self.discover, lazy=True)
            return
        await self.reload(name)

    def has_version(self, model: str, version: str) -> bool:
        """Whether `version` of `model` is loaded here (no load is started)."""
        with self._lock:
            entry = self._models.get(model)
        return entry is not None and version in entry.versions

    async def _close_replaced(self) -> None:
        """Drain and close replaced entries. Shielded: a client that gives up on its
        load or unload request must not leave the old versions half closed."""
        with self._lock:
            replaced, self._replaced = self._replaced, []
        closing = [self._close_entry(entry) for entry in replaced if entry is not None]
        if closing:
            await asyncio.shield(asyncio.gather(*closing))

    @staticmethod
    async def _close_entry(entry: ModelEntry) -> None:
        for served in entry.versions.values():
            await served.batcher.drain(DRAIN_S)
            served.executor.shutdown(wait=False, cancel_futures=True)
            served.runtime.close()

    async def close(self) -> None:
        await self._close_replaced()
        with self._lock:
            entries = list(self._models.values())
        for entry in entries:
            await self._close_entry(entry)

    # -- lookup ----------------------------------------------------------
    def catalog(self) -> list[ModelInfo]:
        """Every model folder and what became of it, by name."""
        with self._lock:
            entries = sorted(self._models.values(), key=lambda e: e.name)
        return [e.info() for e in entries]

    def describe(self, model: str) -> ModelInfo:
        return self._entry(model).info()

    def readiness(self) -> Readiness:
        """Whether the server is ready to serve, by the readiness policy (`Readiness.of`)."""
        return Readiness.of(self.catalog(), loaded=self.loaded.is_set(), strict=self._strict)

    def _entry(self, model: str) -> ModelEntry:
        if self._deferred and model in self._deferred:
            self.ensure_loaded(model)  # callers that can should have loaded it off the loop
        with self._lock:
            found = self._models.get(model)
        if found is None:
            raise ModelNotFound(f"model '{model}' does not exist")
        return found

    def is_ready(self, model: str, version: str | None = None) -> bool:
        """Whether requests for the model (or that version) would be served; an
        unknown model or version is ModelNotFound or VersionNotFound, not "not ready"."""
        entry = self._entry(model)
        if version is None:
            return entry.state is ModelState.READY
        if version in entry.versions:
            return True
        if version in entry.failures or entry.state is ModelState.LOADING:
            return False
        raise VersionNotFound(f"model '{model}' has no version '{version}'")

    def get(self, model: str, version: str | None = None) -> ServedVersion:
        """The served version for a request, or the error the client should see."""
        entry = self._entry(model)
        if entry.state is ModelState.LOADING:
            raise ModelNotReady(f"model '{model}' is still loading")
        if version is None:
            if entry.state is not ModelState.READY or entry.default_version is None:
                raise ModelNotReady(f"model '{model}' is not ready: {entry.reason}")
            version = entry.default_version
        served = entry.versions.get(version)
        if served is not None:
            return served
        failure = entry.failures.get(version)
        if failure is not None:
            raise ModelNotReady(
                f"model '{model}' version '{version}' failed to load: {failure.reason}"
            )
        if entry.state in (ModelState.FAILED, ModelState.UNAVAILABLE) and not entry.versions:
            raise ModelNotReady(f"model '{model}' is not ready: {entry.reason}")
        raise VersionNotFound(f"model '{model}' has no version '{version}'")

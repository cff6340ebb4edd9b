"""The model registry: which models and versions exist, their state, and lookup.

Loading reads the repository folder by folder. A folder that fails (bad
model.toml, missing artefact, signature that does not match the graph) is
recorded as FAILED with its reason; it never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from modelplex.core.batching import Batcher
from modelplex.core.classification import Classifier, read_labels
from modelplex.core.model_config import ModelConfig, RuntimeKind, load_model_config
from modelplex.core.preprocessing import ImagePreprocessor
from modelplex.core.runtimes import Runtime, RuntimeSpec, load_runtime
from modelplex.core.runtimes.base import describe_failure
from modelplex.core.stats import ModelStats
from modelplex.core.tensors import TensorSpec
from modelplex.errors import (
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    VersionNotFound,
)
from modelplex.settings import Settings

log = logging.getLogger(__name__)

DRAIN_S = 10.0
"""How long a replaced or unloaded version may finish the requests it accepted."""
MODEL_FILE = "model.toml"
PIPELINE_FILE = "pipeline.toml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ModelState(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(eq=False)
class ServedVersion:
    """One loaded model version, ready to take requests."""

    model: str
    version: str
    config: ModelConfig
    runtime_kind: RuntimeKind
    artifact: Path
    inputs: tuple[TensorSpec, ...]
    """The public signature clients send."""
    outputs: tuple[TensorSpec, ...]
    runtime: Runtime
    batcher: Batcher
    executor: ThreadPoolExecutor
    stats: ModelStats
    preprocessor: ImagePreprocessor | None
    classifier: Classifier | None
    timeout_s: float
    is_default: bool = False
    loaded_at: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "state": ModelState.READY.value,
            "runtime": self.runtime_kind.value,
            "artifact": self.artifact.name,
            "loaded_at": self.loaded_at,
            "is_default": self.is_default,
        }


@dataclass(eq=False)
class VersionFailure:
    version: str
    reason: str

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "state": ModelState.FAILED.value, "reason": self.reason}


@dataclass(eq=False)
class ModelEntry:
    """A model folder and what became of it."""

    name: str
    path: Path
    state: ModelState = ModelState.LOADING
    reason: str | None = None
    config: ModelConfig | None = None
    versions: dict[str, ServedVersion] = field(default_factory=dict)
    failures: dict[str, VersionFailure] = field(default_factory=dict)
    default_version: str | None = None
    labels: list[str] | None = None


def version_sort_key(version: str) -> tuple[int, int, str]:
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def _runtime_inputs(
    inputs: tuple[TensorSpec, ...], config: ModelConfig, preprocessor: ImagePreprocessor | None
) -> tuple[TensorSpec, ...]:
    """What the runtime receives: the preprocessed image in place of the encoded one."""
    if preprocessor is None or config.preprocessing is None:
        return inputs
    source = config.preprocessing.input
    return (*(s for s in inputs if s.name != source), preprocessor.output_spec)


class ModelRegistry:
    def __init__(self, repository: Path, settings: Settings) -> None:
        self.repository = repository
        self._settings = settings
        self._models: dict[str, ModelEntry] = {}
        self._replaced: list[ModelEntry | None] = []
        self._lock = threading.Lock()
        self.loaded = threading.Event()
        """Set once the initial load of the whole repository has finished."""

    # -- loading ---------------------------------------------------------
    def load_all(self) -> None:
        """Load every model folder; failures are recorded, never raised."""
        try:
            if not self.repository.is_dir():
                log.error("model repository %s does not exist", self.repository)
                return
            for folder in self.model_folders():
                with self._lock:
                    self._models.setdefault(folder.name, ModelEntry(folder.name, folder))
            for folder in self.model_folders():
                self.load_model(folder.name)
        finally:
            self.loaded.set()

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
        returned by `reload`, which closes it."""
        entry = self._build_entry(name, self.repository / name)
        with self._lock:
            self._replaced.append(self._models.get(name))
            self._models[name] = entry
        return entry

    async def reload(self, name: str) -> ModelEntry:
        """Load (or load again) one model folder while the server runs: a new
        version folder is served without a restart. The old versions keep
        answering until the new entry is published, then drain and close."""
        if not _NAME.match(name) or not (self.repository / name).is_dir():
            raise ModelNotFound(f"model '{name}' is not in the repository")
        entry = await asyncio.to_thread(self.load_model, name)
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
            self._replaced.append(old)
        await self._close_replaced()

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

    def _build_entry(self, name: str, folder: Path) -> ModelEntry:
        started = time.perf_counter()
        entry = ModelEntry(name=name, path=folder)
        try:
            if not _NAME.match(name):
                raise ModelLoadError(f"'{name}' is not a valid model name")
            config = load_model_config(folder / MODEL_FILE)
            entry.config = config
            if config.classification and config.classification.labels:
                entry.labels = read_labels(folder / config.classification.labels)
            versions = sorted(
                (p.name for p in folder.iterdir() if p.is_dir() and _NAME.match(p.name)),
                key=version_sort_key,
            )
            if not versions:
                raise ModelLoadError("no version folders")
            default = config.default_version or versions[-1]
            if default not in versions:
                raise ModelLoadError(f"default_version '{default}' has no folder")
            entry.default_version = default
            for version in versions:
                try:
                    entry.versions[version] = self._load_version(entry, config, version)
                except Exception as exc:
                    log.error("model %s version %s failed to load", name, version, exc_info=exc)
                    entry.failures[version] = VersionFailure(version, describe_failure(exc))
            if default in entry.versions:
                entry.versions[default].is_default = True
                state, reason = ModelState.READY, None
            else:
                state = ModelState.FAILED
                reason = f"default version {default}: {entry.failures[default].reason}"
        except Exception as exc:
            log.error("model %s failed to load", name, exc_info=exc)
            state, reason = ModelState.FAILED, describe_failure(exc)
        entry.state, entry.reason = state, reason
        log.info(
            "model %s: %s, versions %s (default %s) in %.2fs",
            name,
            state.value,
            sorted(entry.versions, key=version_sort_key),
            entry.default_version,
            time.perf_counter() - started,
        )
        return entry

    def _load_version(self, entry: ModelEntry, config: ModelConfig, version: str) -> ServedVersion:
        inputs = tuple(t.spec() for t in config.inputs)
        outputs = tuple(t.spec() for t in config.outputs)
        preprocessor = (
            ImagePreprocessor(config.preprocessing, self._settings.max_image_pixels)
            if config.preprocessing
            else None
        )
        kind = config.runtime_for(version)
        artifact = entry.path / version / config.artifact_for(version)
        runtime = load_runtime(
            RuntimeSpec(
                kind=kind,
                artifact=artifact,
                inputs=_runtime_inputs(inputs, config, preprocessor),
                outputs=outputs,
                threads=config.onnx.intra_op_threads or self._settings.effective_inference_threads,
                sklearn=config.sklearn,
                python=config.python,
                module_name=f"modelplex_user_model.{entry.name}.{version}",
            )
        )
        classifier = None
        if config.classification:
            scores = next(o for o in outputs if o.name == config.classification.output)
            classes = scores.shape[-1] if scores.shape else 0
            classifier = Classifier(config.classification, entry.labels, max(classes, 0))
        stats = ModelStats()
        executor = ThreadPoolExecutor(
            config.batching.instances, thread_name_prefix=f"infer-{entry.name}-{version}"
        )
        return ServedVersion(
            model=entry.name,
            version=version,
            config=config,
            runtime_kind=kind,
            artifact=artifact,
            inputs=inputs,
            outputs=outputs,
            runtime=runtime,
            batcher=self._batcher(f"{entry.name}:{version}", config, runtime, executor, stats),
            executor=executor,
            stats=stats,
            preprocessor=preprocessor,
            classifier=classifier,
            timeout_s=(config.timeout_ms or self._settings.default_timeout_ms) / 1000,
        )

    def _batcher(
        self,
        name: str,
        config: ModelConfig,
        runtime: Runtime,
        executor: ThreadPoolExecutor,
        stats: ModelStats,
    ) -> Batcher:
        """The model's batching settings, with the server's defaults filling the gaps."""
        batching, settings = config.batching, self._settings
        delay_ms = (
            batching.max_batch_delay_ms
            if batching.max_batch_delay_ms is not None
            else settings.default_max_batch_delay_ms
        )
        return Batcher(
            name,
            runtime.predict,
            executor,
            output_names=[o.name for o in config.outputs],
            max_batch_size=batching.max_batch_size or settings.default_max_batch_size,
            max_batch_delay_s=delay_ms / 1000,
            max_queue_rows=batching.max_queue_size or settings.default_max_queue_size,
            stats=stats,
            instances=batching.instances,
        )

    async def close(self) -> None:
        await self._close_replaced()
        with self._lock:
            entries = list(self._models.values())
        for entry in entries:
            await self._close_entry(entry)

    # -- lookup ----------------------------------------------------------
    def entries(self) -> list[ModelEntry]:
        with self._lock:
            return sorted(self._models.values(), key=lambda e: e.name)

    def entry(self, model: str) -> ModelEntry:
        with self._lock:
            found = self._models.get(model)
        if found is None:
            raise ModelNotFound(f"model '{model}' does not exist")
        return found

    def is_ready(self, model: str, version: str | None = None) -> bool:
        """Whether requests for the model (or that version) would be served;
        an unknown model is ModelNotFound, not "not ready"."""
        entry = self.entry(model)
        if version is None:
            return entry.state is ModelState.READY
        return version in entry.versions

    def get(self, model: str, version: str | None = None) -> ServedVersion:
        """The served version for a request, or the error the client should see."""
        entry = self.entry(model)
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

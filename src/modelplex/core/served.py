"""What loading a model folder produces: served versions, failed versions, the entry.

A `ServedVersion` owns one version's runtime, batcher, threads and counters; the
rest of the core reaches a version through it, and adapters through the
read-only `info()` snapshots of `modelplex.core.catalog`.
"""

from __future__ import annotations

import functools
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from modelplex.core.batching import Batcher
from modelplex.core.catalog import (
    BatchingInfo,
    ModelInfo,
    ModelState,
    VersionInfo,
    version_sort_key,
)
from modelplex.core.classification import Classifier
from modelplex.core.model_config import ModelConfig, RuntimeKind
from modelplex.core.preprocessing import ImagePreprocessor
from modelplex.core.runtimes import Runtime
from modelplex.core.stats import ModelStats
from modelplex.core.tensors import TensorSpec


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

    @property
    def batching(self) -> BatchingInfo:
        return self.batcher.settings()

    @functools.cached_property
    def signature(self) -> str:
        """A digest of the contract requests are checked against (inputs and outputs)."""
        specs = [(s.name, s.datatype.value, s.shape) for s in (*self.inputs, *self.outputs)]
        return hashlib.sha256(repr((len(self.inputs), specs)).encode()).hexdigest()[:16]

    @property
    def max_rows(self) -> int:
        """The most instances one request may carry (the version's queue bound)."""
        return self.batcher.max_queue_rows

    def is_classifier_output(self, output: str) -> bool:
        return self.classifier is not None and self.classifier.output == output

    @property
    def labels_file(self) -> str | None:
        return self.config.classification.labels if self.config.classification else None

    @functools.cached_property
    def info(self) -> VersionInfo:
        """Built once: a version never changes after it is loaded (its stats are live)."""
        return VersionInfo(
            version=self.version,
            state=ModelState.READY,
            runtime=self.runtime_kind.value,
            artifact=self.artifact.name,
            loaded_at=self.loaded_at,
            is_default=self.is_default,
            batching=self.batching,
            timeout_ms=int(self.timeout_s * 1000),
            stats=self.stats,
        )


@dataclass(eq=False)
class VersionFailure:
    version: str
    reason: str

    def info(self) -> VersionInfo:
        return VersionInfo(self.version, ModelState.FAILED, reason=self.reason)


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
    required: bool = False

    def info(self) -> ModelInfo:
        config = self.config
        # The default version's signature: an onnx model's may come from its graph.
        default = self.versions.get(self.default_version or "")
        ordered = sorted(self.versions, key=version_sort_key)
        failed = sorted(self.failures, key=version_sort_key)
        return ModelInfo(
            name=self.name,
            state=self.state,
            reason=self.reason,
            default_version=self.default_version,
            description=config.description if config else "",
            versions=(
                *(self.versions[v].info for v in ordered),
                *(self.failures[v].info() for v in failed),
            ),
            inputs=default.inputs
            if default
            else tuple(t.spec() for t in config.inputs)
            if config
            else (),
            outputs=default.outputs
            if default
            else tuple(t.spec() for t in config.outputs)
            if config
            else (),
            labels=tuple(self.labels) if self.labels is not None else None,
            preprocessing=config.preprocessing.model_dump()
            if config and config.preprocessing
            else None,
            required=self.required,
        )

"""What the registry knows about its models, as read-only values for the adapters.

Routes, the Open Inference Protocol service and the job layer describe models
from these snapshots; none of them reaches into a served version's batcher,
executor or configuration objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from modelplex.core.stats import ModelStats
from modelplex.core.tensors import TensorSpec


class ModelState(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"
    UNAVAILABLE = "UNAVAILABLE"


def version_sort_key(version: str) -> tuple[int, int, str]:
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


@dataclass(frozen=True, slots=True)
class BatchingInfo:
    max_batch_size: int
    max_batch_delay_ms: float
    max_queue_size: int
    instances: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_batch_size": self.max_batch_size,
            "max_batch_delay_ms": self.max_batch_delay_ms,
            "max_queue_size": self.max_queue_size,
            "instances": self.instances,
        }


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version: served (READY) or failed to load (FAILED, with its reason)."""

    version: str
    state: ModelState
    reason: str | None = None
    runtime: str | None = None
    artifact: str | None = None
    loaded_at: float | None = None
    is_default: bool = False
    batching: BatchingInfo | None = None
    timeout_ms: int | None = None
    stats: ModelStats | None = None
    """Live counters (read-only for callers)."""

    def describe(self) -> dict[str, Any]:
        if self.state is ModelState.FAILED:
            return {"version": self.version, "state": self.state.value, "reason": self.reason}
        return {
            "version": self.version,
            "state": self.state.value,
            "runtime": self.runtime,
            "artifact": self.artifact,
            "loaded_at": self.loaded_at,
            "is_default": self.is_default,
        }


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    state: ModelState
    reason: str | None
    default_version: str | None
    description: str
    versions: tuple[VersionInfo, ...]
    """Served versions first, then failed ones, each in version order."""
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    labels: tuple[str, ...] | None = None
    preprocessing: dict[str, Any] | None = None
    required: bool = False
    """`required = true` in its model.toml: the server is not ready while it has failed."""

    @property
    def version_names(self) -> list[str]:
        return sorted((v.version for v in self.versions), key=version_sort_key)

    @property
    def served_versions(self) -> list[VersionInfo]:
        return [v for v in self.versions if v.state is ModelState.READY]

    def served(self, version: str) -> VersionInfo | None:
        return next((v for v in self.served_versions if v.version == version), None)

    @property
    def reference(self) -> VersionInfo | None:
        """The version whose settings describe the model: the default, else any served one."""
        served = self.served_versions
        default = next((v for v in served if v.version == self.default_version), None)
        return default or (served[0] if served else None)


@dataclass(frozen=True, slots=True)
class Readiness:
    """The readiness policy's verdict: `problem` is None when the server is ready."""

    loaded: bool
    """Every model folder has been loaded (or has failed)."""
    ready: tuple[str, ...]
    failed: dict[str, str | None]
    problem: str | None

    @classmethod
    def of(cls, catalog: list[ModelInfo], *, loaded: bool, strict: bool) -> Readiness:
        """Ready once loading is done, with at least one model READY and no
        required model FAILED; `strict` (Triton's strict readiness): no model FAILED."""
        ready = tuple(m.name for m in catalog if m.state is ModelState.READY)
        failed = [m for m in catalog if m.state is ModelState.FAILED]
        failed_names = ", ".join(m.name for m in failed)
        required = [m.name for m in failed if m.required]
        problem = None
        if not loaded:
            problem = "the server is still loading models"
        elif required:
            problem = f"required models failed to load: {', '.join(required)}"
        elif strict and failed:
            problem = f"models failed to load (strict readiness): {failed_names}"
        elif not ready:
            problem = "no model is ready"
        return cls(loaded, ready, {m.name: m.reason for m in failed}, problem)

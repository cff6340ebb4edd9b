"""Typed requests and results of the data plane: what adapters hand the core."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from modelplex.core.catalog import VersionInfo
from modelplex.core.tensors import Array


@dataclass(slots=True)
class Timings:
    """Seconds spent in each stage of one request."""

    decode_s: float = 0.0
    preprocess_s: float = 0.0
    queue_wait_s: float = 0.0
    inference_s: float = 0.0
    postprocess_s: float = 0.0

    def as_ms(self) -> dict[str, float]:
        return {
            "decode_ms": round(self.decode_s * 1e3, 3),
            "preprocess_ms": round(self.preprocess_s * 1e3, 3),
            "queue_wait_ms": round(self.queue_wait_s * 1e3, 3),
            "inference_ms": round(self.inference_s * 1e3, 3),
            "postprocess_ms": round(self.postprocess_s * 1e3, 3),
        }


@dataclass(slots=True)
class InferenceRequest:
    """One request: a batch of instances as batch-first tensors keyed by input name."""

    model: str
    inputs: dict[str, Array]
    arrived_at: float
    """`time.monotonic()` when the request arrived; deadlines count from here."""
    version: str | None = None
    request_id: str = ""
    timeout_ms: int | None = None
    """The client's own deadline; the model's timeout still applies."""
    top_k: int | None = None
    outputs: Sequence[str] | None = None
    """Outputs to return; None for all."""
    timings: Timings = field(default_factory=Timings)
    """Adapters add their own decode time here before calling the data plane."""


@dataclass(frozen=True, slots=True)
class ClassScore:
    class_id: int
    label: str
    confidence: float


@dataclass(slots=True)
class InferenceResult:
    model: str
    version: str
    outputs: dict[str, Array]
    classes: list[list[ClassScore]] | None
    """Per instance, the top-k classes (classification models only)."""
    timings: Timings
    batch_size: int
    """Rows in the model call that served this request (the largest, if it was split)."""
    rows: int
    input_shapes: dict[str, list[int]]
    """Shapes of the tensors the model received (after pre-processing)."""
    version_info: VersionInfo
    """The serving version: runtime, artefact, load time, whether it is the default."""

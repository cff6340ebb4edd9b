"""The schema of a model folder's `model.toml`.

A model folder looks like this::

    digits/
      model.toml          # this schema
      labels.txt          # optional, one class name per line (line n = class n)
      1/model.joblib      # one sub-folder per version
      2/model.onnx

Unknown keys are errors, so a typo fails the model's load with a clear reason
instead of being silently ignored. See docs/model-repository.md.
"""

from __future__ import annotations

import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelplex.config_errors import dotted, problems
from modelplex.core.tensors import Datatype, TensorSpec
from modelplex.errors import ModelLoadError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuntimeKind(StrEnum):
    ONNX = "onnx"
    SKLEARN = "sklearn"
    PYTHON = "python"

    @property
    def default_artifact(self) -> str:
        return {"onnx": "model.onnx", "sklearn": "model.joblib", "python": "model.py"}[self.value]


class TensorConfig(_Strict):
    name: str = Field(min_length=1, max_length=128)
    datatype: Datatype
    shape: list[int] = Field(default_factory=list)

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        if any(d == 0 or d < -1 for d in shape):
            raise ValueError("dimensions must be positive or -1")
        return shape

    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.datatype, tuple(self.shape))


class BatchingConfig(_Strict):
    max_batch_size: int | None = Field(default=None, gt=0, le=4096)
    """Rows merged into one model call."""
    max_batch_delay_ms: float | None = Field(default=None, ge=0, le=10_000)
    """How long an idle model waits for more rows before running a partial batch."""
    max_queue_size: int | None = Field(default=None, gt=0)
    """Rows allowed to wait; beyond this requests are shed with RESOURCE_EXHAUSTED."""
    instances: int = Field(default=1, ge=1, le=64)
    """Batches of this version that may run at once, each on its own thread. Two
    single-threaded instances beat one two-threaded one for small CNNs on CPU."""


class ClassificationConfig(_Strict):
    output: str
    """Output holding one score per class."""
    labels: str | None = None
    """File (relative to the model folder) with one class name per line."""
    apply_softmax: bool = False
    """Set when the output holds logits rather than probabilities."""


class ImagePreprocessing(_Strict):
    kind: Literal["image"] = "image"
    input: str
    """The BYTES input holding encoded image files."""
    output: str
    """The runtime input fed with the pre-processed pixels."""
    size: int = Field(default=224, gt=0, le=4096)
    crop_fraction: float = Field(default=1.0, gt=0, le=1)
    """Centre crop of this fraction of the shorter side before resizing."""
    resample: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    mean: float = 0.0
    std: float = 1.0
    layout: Literal["NCHW", "NHWC"] = "NCHW"


class SklearnMethod(StrEnum):
    PREDICT = "predict"
    PREDICT_PROBA = "predict_proba"
    PREDICT_LOG_PROBA = "predict_log_proba"
    DECISION_FUNCTION = "decision_function"
    TRANSFORM = "transform"


class SklearnOptions(_Strict):
    methods: dict[str, SklearnMethod] = Field(default_factory=dict)
    """Output name -> estimator method that computes it."""


class PythonOptions(_Strict):
    class_name: str = Field(default="Model", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """Class in the version's `model.py` with `load(path)` and `predict(batch)`."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the class's constructor."""


class OnnxOptions(_Strict):
    intra_op_threads: int | None = Field(default=None, ge=1)
    """Overrides the server's `inference_threads` for this model."""


class VersionConfig(_Strict):
    runtime: RuntimeKind | None = None
    artifact: str | None = None
    description: str | None = None


class ModelConfig(_Strict):
    description: str = ""
    runtime: RuntimeKind
    artifact: str | None = None
    """File inside each version folder; defaults by runtime (model.onnx, ...)."""
    default_version: str | None = None
    timeout_ms: int | None = Field(default=None, gt=0)
    required: bool = False
    """The server is not ready (`/readyz`, V2 server readiness) while this model has failed."""
    inputs: list[TensorConfig] = Field(default_factory=list)
    """The signature clients send; an onnx model's default is its graph's inputs."""
    outputs: list[TensorConfig] = Field(default_factory=list)
    """What it answers; an onnx model's default is its graph's outputs."""
    batching: BatchingConfig = BatchingConfig()
    classification: ClassificationConfig | None = None
    preprocessing: ImagePreprocessing | None = None
    onnx: OnnxOptions = OnnxOptions()
    sklearn: SklearnOptions = SklearnOptions()
    python: PythonOptions = PythonOptions()
    versions: dict[str, VersionConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        names = [t.name for t in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError("input names must be unique")
        out_names = [t.name for t in self.outputs]
        if len(set(out_names)) != len(out_names):
            raise ValueError("output names must be unique")
        if self.runtime is not RuntimeKind.ONNX and not (self.inputs and self.outputs):
            raise ValueError(
                f"runtime '{self.runtime}' needs [[inputs]] and [[outputs]] (only onnx "
                "reads its signature from the model file)"
            )
        # Undeclared outputs come from the graph: the loader checks the name then.
        if self.outputs and self.classification and self.classification.output not in out_names:
            raise ValueError(
                f"classification.output '{self.classification.output}' is not an output"
            )
        if self.preprocessing:
            by_name = {t.name: t for t in self.inputs}
            source = by_name.get(self.preprocessing.input)
            if source is None or source.datatype is not Datatype.BYTES:
                raise ValueError("preprocessing.input must name a BYTES input")
        return self

    def runtime_for(self, version: str) -> RuntimeKind:
        override = self.versions.get(version)
        return (override.runtime if override and override.runtime else None) or self.runtime

    def artifact_for(self, version: str) -> str:
        override = self.versions.get(version)
        if override and override.artifact:
            return override.artifact
        if self.artifact and self.runtime_for(version) is self.runtime:
            return self.artifact
        return self.runtime_for(version).default_artifact


C = TypeVar("C", bound=BaseModel)


def read_toml_config(path: Path, schema: type[C], error: type[ModelLoadError]) -> C:
    """A TOML file (model.toml, pipeline.toml) parsed and validated against `schema`;
    every failure is an `error` that names the file and the problems."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path.name} is missing") from None
    except OSError as exc:  # unreadable (permissions, a directory of that name)
        raise error(f"{path.name} cannot be read ({type(exc).__name__})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path.name} is not valid TOML: {exc}") from None
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        # One line per problem, naming the file and key (a did-you-mean for typos);
        # a model's FAILED reason is one line, so they are joined with "; ".
        lines = problems(exc, schema, lambda loc: f"{path.name}: {dotted(loc) or '(top level)'}")
        raise error("; ".join(lines)) from None


_REQUIRED_LINE = re.compile(r"^\s*required\s*=\s*true\s*(#.*)?$", re.MULTILINE)


def declares_required(path: Path) -> bool:
    """Whether a model.toml that failed validation (or is not even valid TOML) says
    `required = true` at its top: its model must keep the server not ready."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    try:
        return tomllib.loads(text).get("required") is True
    except tomllib.TOMLDecodeError:  # before the first table, as TOML would read it
        return bool(_REQUIRED_LINE.search(text.split("\n[", 1)[0]))


def load_model_config(path: Path) -> ModelConfig:
    """Parse and validate a `model.toml`, translating every failure to ModelLoadError."""
    return read_toml_config(path, ModelConfig, ModelLoadError)

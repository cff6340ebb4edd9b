"""The runtime interface and the factory that picks an implementation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from modelplex.core.model_config import PythonOptions, RuntimeKind, SklearnOptions
from modelplex.core.tensors import Array, TensorSpec
from modelplex.errors import ModelLoadError


class Runtime(Protocol):
    """A loaded model version. `predict` runs in a worker thread, one batch at a time."""

    inputs: tuple[TensorSpec, ...]
    """The tensors it takes: the spec's, or (onnx, when the spec has none) its graph's."""
    outputs: tuple[TensorSpec, ...]
    """The tensors it returns: the spec's, or (onnx, when the spec has none) its graph's."""

    def predict(self, inputs: dict[str, Array]) -> dict[str, Array]:
        """Map batch-first input tensors to batch-first output tensors."""
        ...

    def close(self) -> None:
        """Release what `load` acquired."""
        ...


@dataclass(frozen=True)
class RuntimeSpec:
    """Everything a runtime needs to load one version."""

    kind: RuntimeKind
    artifact: Path
    inputs: tuple[TensorSpec, ...]
    """The tensors the runtime receives (after any pre-processing); empty: the
    artefact's own (onnx only)."""
    outputs: tuple[TensorSpec, ...]
    """Empty: the artefact's own (onnx only)."""
    threads: int = 1
    sklearn: SklearnOptions = field(default_factory=SklearnOptions)
    python: PythonOptions = field(default_factory=PythonOptions)
    module_name: str = "modelplex_user_model"


def load_runtime(spec: RuntimeSpec) -> Runtime:
    """Load `spec.artifact` with the runtime `spec.kind` names."""
    if not spec.artifact.is_file():
        raise ModelLoadError(
            f"artifact '{spec.artifact.name}' not found in {spec.artifact.parent.name}/"
        )
    # Imported here so a server that serves only one runtime never imports the others.
    if spec.kind is RuntimeKind.ONNX:
        from modelplex.core.runtimes.onnx import OnnxRuntime

        return OnnxRuntime(spec)
    if not (spec.inputs and spec.outputs):  # a version may run another runtime than the model
        raise ModelLoadError(
            f"runtime '{spec.kind}' needs [[inputs]] and [[outputs]] in model.toml "
            "(only onnx reads its signature from the model file)"
        )
    if spec.kind is RuntimeKind.SKLEARN:
        from modelplex.core.runtimes.sklearn import SklearnRuntime

        return SklearnRuntime(spec)
    from modelplex.core.runtimes.python import PythonRuntime

    return PythonRuntime(spec)


def describe_failure(exc: BaseException) -> str:
    """The reason for a load failure that clients may see: our own message for a
    ModelLoadError, only the exception's type for anything else (its text can
    hold paths and other internals; the log has it)."""
    if isinstance(exc, ModelLoadError):
        return exc.message
    return f"unexpected {type(exc).__name__} (see the server log)"

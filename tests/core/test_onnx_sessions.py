"""Versions that load one ONNX file share its session, and closing one leaves the other serving."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from modelplex.core.model_config import RuntimeKind
from modelplex.core.runtimes import RuntimeSpec, load_runtime
from modelplex.core.runtimes import onnx as onnx_runtime
from modelplex.core.tensors import Datatype, TensorSpec
from modelplex.errors import ModelLoadError

INPUTS = (TensorSpec("pixels", Datatype.FP32, (64,)),)
OUTPUTS = (
    TensorSpec("label", Datatype.INT64, ()),
    TensorSpec("probabilities", Datatype.FP32, (10,)),
)


def _spec(artifact: Path) -> RuntimeSpec:
    return RuntimeSpec(kind=RuntimeKind.ONNX, artifact=artifact, inputs=INPUTS, outputs=OUTPUTS)


def test_one_file_one_session(example_repo: Path, tmp_path: Path) -> None:
    artifact = example_repo / "digits" / "2" / "model.onnx"
    copy = tmp_path / "model.onnx"
    shutil.copyfile(artifact, copy)
    first, second, other = (load_runtime(_spec(p)) for p in (artifact, artifact, copy))
    assert isinstance(first, onnx_runtime.OnnxRuntime)
    assert isinstance(second, onnx_runtime.OnnxRuntime)
    assert isinstance(other, onnx_runtime.OnnxRuntime)
    assert first._session is second._session
    assert other._session is not first._session  # another file, even with the same bytes
    first.close()
    pixels = {"pixels": np.zeros((2, 64), dtype=np.float32)}
    assert second.predict(pixels)["label"].shape == (2,)
    second.close()
    other.close()
    held = onnx_runtime._SESSIONS._sessions
    assert other._key not in held  # (a server another test started may hold digits' own file)


def test_the_graph_signature_is_the_default(example_repo: Path) -> None:
    artifact = example_repo / "digits" / "2" / "model.onnx"
    runtime = load_runtime(
        RuntimeSpec(kind=RuntimeKind.ONNX, artifact=artifact, inputs=(), outputs=())
    )
    try:
        assert runtime.inputs == INPUTS
        assert runtime.outputs == OUTPUTS
    finally:
        runtime.close()


@pytest.mark.parametrize(
    ("node", "message"),
    [
        (SimpleNamespace(name="x", type="seq(tensor(float))", shape=[None]), "cannot serve"),
        (SimpleNamespace(name="x", type="tensor(float)", shape=[1, 3]), "dynamic first"),
        (SimpleNamespace(name="x", type="tensor(float)", shape=[]), "dynamic first"),
    ],
)
def test_a_graph_signature_modelplex_cannot_serve_says_what_to_declare(
    node: SimpleNamespace, message: str
) -> None:
    with pytest.raises(ModelLoadError, match=message) as refused:
        onnx_runtime.graph_signature("input", [node])
    assert "[[inputs]]" in refused.value.message


def test_dynamic_dimensions_are_minus_one() -> None:
    node = SimpleNamespace(name="x", type="tensor(uint8)", shape=["batch", "h", 3, None])
    assert onnx_runtime.graph_signature("input", [node]) == (
        TensorSpec("x", Datatype.UINT8, (-1, 3, -1)),
    )

from __future__ import annotations

from pathlib import Path

import pytest

from modelplex.core.model_config import RuntimeKind, declares_required, load_model_config
from modelplex.errors import ModelLoadError

VALID = """
runtime = "onnx"
[[inputs]]
name = "x"
datatype = "FP32"
shape = [4]
[[outputs]]
name = "p"
datatype = "FP32"
shape = [3]
[classification]
output = "p"
[versions."1"]
runtime = "sklearn"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model.toml"
    path.write_text(text)
    return path


def test_valid_config_and_version_overrides(tmp_path: Path) -> None:
    config = load_model_config(write(tmp_path, VALID))
    assert config.runtime_for("1") is RuntimeKind.SKLEARN
    assert config.artifact_for("1") == "model.joblib"
    assert config.runtime_for("2") is RuntimeKind.ONNX
    assert config.artifact_for("2") == "model.onnx"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("runtime = 'onnx'\nwhat = 1", "what"),
        ("runtime = 'tensorflow'", "runtime"),
        (VALID.replace("shape = [4]", "shape = [0]"), "positive or -1"),
        (VALID.replace('output = "p"', 'output = "q"'), "not an output"),
        (VALID.replace('datatype = "FP32"', 'datatype = "FLOAT"', 1), "datatype"),
        ("runtime = ", "not valid TOML"),
        ("runtime = 'python'", "needs \\[\\[inputs\\]\\] and \\[\\[outputs\\]\\]"),
    ],
)
def test_invalid_configs_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model_config(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="missing"):
        load_model_config(tmp_path / "model.toml")


def test_an_onnx_model_may_leave_its_signature_to_the_graph(tmp_path: Path) -> None:
    config = load_model_config(write(tmp_path, "runtime = 'onnx'\n[classification]\noutput = 'p'"))
    assert config.inputs == []
    assert config.outputs == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (VALID + "[python]\nclas_name = 'M'\n", "model.toml: python.clas_name: unknown key "
         "(did you mean 'class_name'?)"),
        (VALID.replace('name = "x"', 'nmae = "x"'), "model.toml: inputs.0.nmae: unknown key "
         "(did you mean 'name'?)"),
        ("timeout_ms = 'soon'\n" + VALID, "model.toml: timeout_ms: expected a valid integer, "
         "unable to parse string as an integer, got 'soon'"),
    ],
)  # fmt: skip
def test_problems_are_one_line_each_with_a_did_you_mean(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ModelLoadError) as raised:
        load_model_config(write(tmp_path, text))
    assert message in raised.value.message.split("; ")
    assert "pydantic" not in raised.value.message


@pytest.mark.parametrize(
    ("text", "required"),
    [
        ("required = true\nruntime = 'tensorflow'\n", True),  # valid TOML, invalid config
        ("required = true  # must serve\nruntime = \n", True),  # not even TOML
        ("runtime = \n[batching]\nrequired = true\n", False),  # not the top-level key
        ("required = false\nruntime = \n", False),
    ],
)
def test_a_broken_model_toml_can_still_say_it_is_required(
    tmp_path: Path, text: str, required: bool
) -> None:
    assert declares_required(write(tmp_path, text)) is required

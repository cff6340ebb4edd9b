"""Importing a repository's own code: registered under its name, never fatal."""

from __future__ import annotations

import dataclasses
import pickle
import textwrap
from pathlib import Path

import pytest

from modelplex.core.model_config import read_toml_config
from modelplex.core.user_code import import_user_module, module_name_for
from modelplex.errors import ModelLoadError, PipelineLoadError
from modelplex.jobs.pipelines import PipelineConfig, PipelineRegistry, PipelineState

DATACLASS_FILE = """
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Box:
    value: list[int]


def double(ctx, data):
    return {"box": dataclasses.asdict(Box([2 * v for v in data["values"]]))}
"""


def test_classes_of_an_imported_file_find_their_module(tmp_path: Path) -> None:
    path = tmp_path / "steps.py"
    path.write_text(DATACLASS_FILE)
    module = import_user_module(path, module_name_for("steps", "boxes"), ModelLoadError)
    box = module.Box([1, 2])
    assert dataclasses.asdict(box) == {"value": [1, 2]}
    assert pickle.loads(pickle.dumps(box)) == box  # pickling looks the module up by name


@pytest.mark.parametrize(
    ("code", "error"),
    [("raise RuntimeError('secret')", "RuntimeError"), ("import sys\nsys.exit(3)", "SystemExit")],
)
def test_a_file_that_fails_or_exits_is_a_load_error(tmp_path: Path, code: str, error: str) -> None:
    path = tmp_path / "model.py"
    path.write_text(code)
    with pytest.raises(ModelLoadError) as refused:
        import_user_module(path, "modelplex_test_user_code.failing", ModelLoadError)
    assert error in refused.value.message
    assert "secret" not in refused.value.message


def test_a_pipeline_with_a_dataclass_and_one_that_exits(tmp_path: Path) -> None:
    for name, code in (("boxes", DATACLASS_FILE), ("exits", "import sys\nsys.exit(3)\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "pipeline.toml").write_text(
            textwrap.dedent(
                """
                [[steps]]
                name = "double"
                function = "double"
                """
            )
        )
        (tmp_path / name / "steps.py").write_text(code)
    registry = PipelineRegistry(tmp_path)
    registry.load_all()  # the process is still here
    assert registry.get("boxes").state is PipelineState.READY
    failed = registry.get("exits")
    assert failed.state is PipelineState.FAILED
    assert failed.reason is not None
    assert "SystemExit" in failed.reason


def test_an_unreadable_config_is_a_load_error(tmp_path: Path) -> None:
    unreadable = tmp_path / "pipeline.toml"
    unreadable.mkdir()  # a directory where the file should be
    with pytest.raises(PipelineLoadError, match="cannot be read"):
        read_toml_config(unreadable, PipelineConfig, PipelineLoadError)


def test_module_names_are_top_level_and_distinct() -> None:
    names = {module_name_for("model", "a-b", "1"), module_name_for("model", "a_b", "1")}
    assert len(names) == 2  # the same once sanitised, told apart by the digest
    assert all("." not in name for name in names)

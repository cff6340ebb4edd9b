"""Loading pipelines: a valid one is READY; a broken one is FAILED with its reason,
and never stops the others (nor raises)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from modelplex.errors import InvalidInput, PipelineNotFound
from modelplex.jobs.pipelines import Pipeline, PipelineRegistry, PipelineState
from tests.jobs.units import write_pipeline

STEPS = """
def decode(ctx, data):
    return data


async def classify(ctx, data):
    return data

not_a_function = 3

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Rows(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[list[float]] = Field(min_length=1)


class Knobs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strict: bool = False
    mode: Literal["fast", "exact"] = "fast"
"""

VALID = """
description = "Tag an album of photos"
max_attempts = 2

[[steps]]
name = "decode"
function = "decode"
timeout_s = 120
retry = { max_attempts = 4, backoff_s = 0.5 }

[[steps]]
name = "classify"
model = "efficientnet-lite0"
input = "pixels"
output = "scores"
batch_size = 16
"""

ONE_STEP = """
[[steps]]
name = "decode"
function = "decode"
"""


def load(repo: Path) -> PipelineRegistry:
    registry = PipelineRegistry(repo)
    registry.load_all()
    return registry


def load_one(tmp_path: Path, toml: str, steps: str | None = STEPS, name: str = "p") -> Pipeline:
    write_pipeline(tmp_path, name, toml, steps)
    return load(tmp_path).get(name)


def test_a_valid_pipeline_is_ready(tmp_path: Path) -> None:
    pipeline = load_one(tmp_path, VALID)
    assert pipeline.state is PipelineState.READY
    assert pipeline.reason is None
    assert pipeline.path == tmp_path / "p"
    assert pipeline.step_names == ["decode", "classify"]
    assert pipeline.config is not None
    assert pipeline.config.max_attempts == 2
    decode, classify = pipeline.config.steps
    assert decode.retry is not None
    assert decode.retry.max_attempts == 4
    assert decode.retry.backoff.delay(1) == 0.5
    assert decode.retry.backoff.delay(2) == 1.0
    assert classify.retry is None
    assert (classify.input, classify.output, classify.batch_size) == ("pixels", "scores", 16)
    # Only the functions the steps name, taken from steps.py.
    assert set(pipeline.functions) == {"decode"}
    assert pipeline.functions["decode"].__name__ == "decode"


def test_describe(tmp_path: Path) -> None:
    assert load_one(tmp_path, VALID).describe() == {
        "name": "p",
        "state": "READY",
        "description": "Tag an album of photos",
        "reason": None,
        "input": {"schema": {"type": "object", "description": "Any JSON object."}, "upload": False},
        "options": {},
        "steps": [
            {
                "name": "decode",
                "kind": "function",
                "model": None,
                "timeout_s": 120,
                "max_attempts": 4,
            },
            {
                "name": "classify",
                "kind": "model",
                "model": "efficientnet-lite0",
                "timeout_s": 300,
                "max_attempts": 1,
            },
        ],
    }


def test_describe_a_failed_pipeline(tmp_path: Path) -> None:
    described = load_one(tmp_path, "steps = [", None).describe()
    assert described["state"] == "FAILED"
    assert described["reason"].startswith("pipeline.toml is not valid TOML")
    assert described["description"] == ""
    assert described["steps"] == []


def test_an_async_step_function_is_kept_as_a_coroutine_function(tmp_path: Path) -> None:
    toml = '[[steps]]\nname = "c"\nfunction = "classify"\n'
    pipeline = load_one(tmp_path, toml)
    assert pipeline.state is PipelineState.READY
    assert inspect.iscoroutinefunction(pipeline.functions["classify"])


def test_a_pipeline_of_model_steps_needs_no_steps_py(tmp_path: Path) -> None:
    pipeline = load_one(tmp_path, '[[steps]]\nname = "m"\nmodel = "digits"\n', steps=None)
    assert pipeline.state is PipelineState.READY
    assert pipeline.functions == {}


@pytest.mark.parametrize(
    ("toml", "steps", "reason"),
    [
        ("steps = [", STEPS, "pipeline.toml is not valid TOML"),
        (ONE_STEP + "colour = 'red'\n", STEPS, "pipeline.toml: steps.0.colour: unknown key"),
        ('colour = "red"\n' + ONE_STEP, STEPS, "pipeline.toml: colour: unknown key"),
        (
            ONE_STEP + 'model = "digits"\n',
            STEPS,
            "step 'decode' needs exactly one of 'function' or 'model'",
        ),
        (
            '[[steps]]\nname = "decode"\n',
            STEPS,
            "step 'decode' needs exactly one of 'function' or 'model'",
        ),
        (ONE_STEP + ONE_STEP, STEPS, "step names must be unique"),
        ('description = "no steps"\n', STEPS, "pipeline.toml: steps: required key is missing"),
        ("steps = []\n", STEPS, "steps: list should have at least 1 item"),
        (ONE_STEP + "timeout_s = 0\n", STEPS, "steps.0.timeout_s"),
        (ONE_STEP + "retry = { max_attempts = 0 }\n", STEPS, "steps.0.retry.max_attempts"),
        (ONE_STEP.replace('"decode"\nf', '"bad name"\nf'), STEPS, "steps.0.name"),
        (ONE_STEP, None, "steps.py not found"),
        (ONE_STEP, "raise RuntimeError('secret')\n", "importing steps.py failed (RuntimeError;"),
        (ONE_STEP, "def decode(ctx, data)\n", "importing steps.py failed (SyntaxError;"),
        (ONE_STEP.replace('= "decode"\n', '= "missing"\n'), STEPS, "has no function missing()"),
        (
            ONE_STEP.replace('function = "decode"', 'function = "not_a_function"'),
            STEPS,
            "steps.py has no function not_a_function()",
        ),
    ],
    ids=[
        "invalid-toml",
        "unknown-step-key",
        "unknown-key",
        "function-and-model",
        "neither-function-nor-model",
        "duplicate-step-names",
        "no-steps-key",
        "empty-steps",
        "zero-timeout",
        "zero-step-attempts",
        "invalid-step-name",
        "steps-py-missing",
        "steps-py-raises",
        "steps-py-syntax-error",
        "function-missing",
        "function-not-callable",
    ],
)
def test_a_broken_pipeline_fails_with_its_reason(
    tmp_path: Path, toml: str, steps: str | None, reason: str
) -> None:
    pipeline = load_one(tmp_path, toml, steps)
    assert pipeline.state is PipelineState.FAILED
    assert pipeline.reason is not None
    assert reason in pipeline.reason
    assert "secret" not in pipeline.reason  # an import error's text stays in the log
    assert pipeline.config is None
    assert pipeline.functions == {}
    assert pipeline.step_names == []


def test_a_toml_file_that_is_not_utf8_fails(tmp_path: Path) -> None:
    folder = write_pipeline(tmp_path, "p", ONE_STEP, STEPS)
    (folder / "pipeline.toml").write_bytes(b'description = "\xff"\n' + ONE_STEP.encode())
    pipeline = load(tmp_path).get("p")
    assert pipeline.state is PipelineState.FAILED
    assert pipeline.reason is not None
    assert pipeline.reason.startswith("pipeline.toml is not valid TOML")


@pytest.mark.parametrize("name", ["bad name", "-leading-dash", "x" * 129])
def test_an_invalid_folder_name_fails(tmp_path: Path, name: str) -> None:
    pipeline = load_one(tmp_path, ONE_STEP, name=name)
    assert pipeline.state is PipelineState.FAILED
    assert pipeline.reason == f"'{name}' is not a valid pipeline name"


def test_one_broken_pipeline_does_not_stop_the_others(tmp_path: Path) -> None:
    write_pipeline(tmp_path, "a-good", ONE_STEP, STEPS)
    write_pipeline(tmp_path, "b-broken", ONE_STEP, "raise ImportError('nope')\n")
    write_pipeline(tmp_path, "c-bad-toml", "[[steps]\n", None)
    write_pipeline(tmp_path, "d-good", VALID, STEPS)
    (tmp_path / "model-folder").mkdir()  # no pipeline.toml: not a pipeline
    (tmp_path / "e-file-not-folder").write_text("pipeline.toml")
    registry = load(tmp_path)
    states = {p.name: p.state for p in registry.all()}
    assert states == {
        "a-good": PipelineState.READY,
        "b-broken": PipelineState.FAILED,
        "c-bad-toml": PipelineState.FAILED,
        "d-good": PipelineState.READY,
    }
    assert [p.name for p in registry.all()] == sorted(states)


def test_each_pipeline_gets_its_own_steps_module(tmp_path: Path) -> None:
    write_pipeline(tmp_path, "one", ONE_STEP, "def decode(ctx, data):\n    return 1\n")
    write_pipeline(tmp_path, "two", ONE_STEP, "def decode(ctx, data):\n    return 2\n")
    registry = load(tmp_path)
    assert registry.get("one").functions["decode"](None, None) == 1  # type: ignore[arg-type]
    assert registry.get("two").functions["decode"](None, None) == 2  # type: ignore[arg-type]


def test_an_unknown_pipeline_is_not_found(tmp_path: Path) -> None:
    registry = load(tmp_path)
    with pytest.raises(PipelineNotFound, match="pipeline 'nope' does not exist"):
        registry.get("nope")


def test_a_missing_repository_has_no_pipelines(tmp_path: Path) -> None:
    assert load(tmp_path / "absent").all() == []


SCHEMA = (
    ONE_STEP
    + """
[input]
schema = "Rows"
upload = true

[options]
strict = true
"""
)


def test_an_input_schema_is_checked_and_described(tmp_path: Path) -> None:
    pipeline = load_one(tmp_path, SCHEMA)
    assert pipeline.state is PipelineState.READY, pipeline.reason
    assert pipeline.accepts_upload
    described = pipeline.describe()
    assert described["input"]["schema"]["properties"]["rows"]["minItems"] == 1
    assert described["options"] == {"strict": True}
    pipeline.check_input({"rows": [[1, 2]]})
    for document, message in [
        ({"foo": 1}, "unknown fields ['input.foo']"),
        ({}, "'input.rows' is required"),
        ({"rows": [["x"]]}, "'input.rows.0.0'"),
        ([1], "must be a JSON object"),
    ]:
        with pytest.raises(InvalidInput) as refused:
            pipeline.check_input(document)
        assert message in refused.value.message
        assert "pipeline 'p'" in refused.value.message


@pytest.mark.parametrize(
    ("schema", "message"),
    [("Missing", "no pydantic model Missing"), ("not_a_function", "no pydantic model")],
)
def test_an_input_schema_that_is_not_a_model_fails_the_load(
    tmp_path: Path, schema: str, message: str
) -> None:
    pipeline = load_one(tmp_path, SCHEMA.replace('"Rows"', f'"{schema}"'))
    assert pipeline.state is PipelineState.FAILED
    assert message in (pipeline.reason or "")


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ('mode = "exakt"', "pipeline.toml: options.mode: expected 'fast' or 'exact', got 'exakt'"),
        ("strikt = true", "pipeline.toml: options.strikt: unknown key (did you mean 'strict'?)"),
    ],
)
def test_options_that_do_not_fit_their_schema_fail_the_load(
    tmp_path: Path, options: str, problem: str
) -> None:
    """Not every job that reads them: the pipeline is FAILED with the reason."""
    toml = 'options_schema = "Knobs"\n' + ONE_STEP + f"\n[options]\n{options}\n"
    pipeline = load_one(tmp_path, toml)
    assert pipeline.state is PipelineState.FAILED
    assert pipeline.reason == problem


def test_options_that_fit_their_schema_load(tmp_path: Path) -> None:
    toml = 'options_schema = "Knobs"\n' + ONE_STEP + '\n[options]\nmode = "exact"\n'
    pipeline = load_one(tmp_path, toml)
    assert pipeline.state is PipelineState.READY, pipeline.reason
    assert pipeline.describe()["options"] == {"mode": "exact"}
    missing = load_one(tmp_path, 'options_schema = "Nothing"\n' + ONE_STEP, name="q")
    assert missing.reason == "steps.py has no pydantic model Nothing"

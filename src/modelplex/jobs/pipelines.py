"""Pipelines: named steps declared in the model repository.

A pipeline folder holds a `pipeline.toml` and, for Python steps, a `steps.py`::

    album-tagging/
      pipeline.toml
      steps.py

    description = "Tag an album of photos"
    max_attempts = 2                 # job-level attempts (worker crashes, retryable errors)
    options_schema = "AlbumOptions"  # a pydantic model in steps.py that [options] must fit

    [input]
    schema = "AlbumInput"            # a pydantic model in steps.py: the JSON input's schema
    upload = true                    # a file may be uploaded instead (default: false)

    [options]                        # the pipeline's own settings, for its steps: ctx.options
    on_undecodable_image = "report"

    [[steps]]
    name = "decode"
    function = "decode"              # a function in steps.py: f(ctx, data) -> data
    timeout_s = 120
    retry = { max_attempts = 2, backoff_s = 0.5 }   # replaces the job's retries for this step

    [[steps]]
    name = "classify"
    model = "efficientnet-lite0"     # a model from the repository
    input = "pixels"                 # data key holding its input tensor (default: its input name)
    output = "scores"                # data key for its outputs (default: the step name)
    batch_size = 32

A job's JSON input is checked at submission against the `[input] schema`
(INVALID_INPUT naming the field; without a schema any JSON object is taken),
and a file upload is refused unless `[input] upload` allows it, so a job is not
accepted only to fail on its first step. The schema is shown in
`GET /v1/pipelines` and in the OpenAPI document.

Each step receives the previous step's `data` (the first step, the job's input)
and returns the next. A function may be sync (run on a thread) or async. Steps
report progress and check for cancellation through `StepContext`, and signal
failures with modelplex's errors (`InvalidInput` for input the pipeline cannot
use) or, for a failure of its own, `StepError(code, message)`.

Step attempts and job attempts do not multiply. A step that declares `retry`
owns its retries: it runs at most `retry.max_attempts` times in a job attempt,
and a failure it still has after them ends the job (no job retry runs the step
again). A step without `retry` is retried by the job: a retryable failure
(per the error table, or a `StepError(..., retryable=True)`) starts the job's
next attempt, up to the job's `max_attempts`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelplex.config_errors import dotted, problems
from modelplex.core.envelopes import describe
from modelplex.core.model_config import read_toml_config
from modelplex.core.tensors import Array
from modelplex.core.user_code import import_user_module, module_name_for
from modelplex.errors import InvalidInput, JobCancelled, PipelineLoadError, PipelineNotFound
from modelplex.retry import Backoff

log = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.toml"
STEPS_FILE = "steps.py"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


__all__ = ["JobCancelled", "StepContext", "StepError"]  # what steps.py files import

STEP_RETRY_CAP_S = 600.0


class StepError(Exception):
    """A pipeline's own failure with its own stable code (e.g. INPUT_DECODE_FAILED),
    which the pipeline documents; modelplex's own failures are its error classes."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class StepContext(Protocol):
    """What a step sees of the job it runs in."""

    job_id: str
    step: str
    options: dict[str, Any]
    """The pipeline's `[options]` from its pipeline.toml."""

    def progress(self, fraction: float) -> None:
        """Report this step's progress (0..1); written to the job at most a few times a second."""
        ...

    def cancelled(self) -> bool: ...

    def check_cancelled(self) -> None:
        """Raise JobCancelled if the job was cancelled or the step ran past its
        timeout (call between units of work)."""
        ...

    def infer(
        self, model: str, inputs: dict[str, Array], version: str | None = None
    ) -> dict[str, Array]:
        """Run a repository model (with its batching) from a sync step."""
        ...

    def read_upload(self) -> bytes:
        """The file uploaded with the job (e.g. a zip archive), from a sync step;
        StepError INVALID_INPUT if the job has none."""
        ...

    def open_upload(self) -> BinaryIO:
        """The uploaded file as a seekable file object (the caller closes it), to
        read in pieces instead of whole; InvalidInput if the job has none."""
        ...


StepFunction = Callable[[StepContext, Any], Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepRetry(_Strict):
    max_attempts: int = Field(default=1, ge=1, le=20)
    backoff_s: float = Field(default=1.0, ge=0, le=600)
    """First delay; it doubles per failure, up to ten minutes."""

    @property
    def backoff(self) -> Backoff:
        return Backoff(base_s=self.backoff_s, cap_s=STEP_RETRY_CAP_S)


class StepConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    function: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    model: str | None = None
    version: str | None = None
    input: str | None = None
    output: str | None = None
    batch_size: int = Field(default=32, ge=1, le=4096)
    timeout_s: float = Field(default=300, gt=0)
    retry: StepRetry | None = None
    """The step's own retries; unset, a retryable failure retries the whole job."""

    @model_validator(mode="after")
    def _one_kind(self) -> StepConfig:
        if (self.function is None) == (self.model is None):
            raise ValueError(f"step '{self.name}' needs exactly one of 'function' or 'model'")
        return self


class InputConfig(_Strict):
    schema_: str | None = Field(default=None, alias="schema", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """A pydantic model in steps.py that the job's JSON input must fit."""
    upload: bool = False
    """Whether a file may be uploaded as the job's input (steps read it with
    `ctx.open_upload()`)."""


ANY_OBJECT: dict[str, Any] = {"type": "object", "description": "Any JSON object."}


class PipelineConfig(_Strict):
    description: str = ""
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    input: InputConfig = InputConfig()
    options: dict[str, Any] = Field(default_factory=dict)
    """The pipeline's own settings, for its steps (`ctx.options`)."""
    options_schema: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """A pydantic model in steps.py that `[options]` must fit (checked at load)."""
    steps: list[StepConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> PipelineConfig:
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError("step names must be unique")
        return self


class PipelineState(StrEnum):
    READY = "READY"
    FAILED = "FAILED"


@dataclass
class Pipeline:
    name: str
    path: Path
    state: PipelineState
    config: PipelineConfig | None = None
    functions: dict[str, StepFunction] = field(default_factory=dict)
    reason: str | None = None
    input_model: type[BaseModel] | None = None
    """The JSON input's schema (`[input] schema`); None: any JSON object."""
    input_schema: dict[str, Any] = field(default_factory=lambda: ANY_OBJECT)
    """`input_model` as JSON Schema, computed once at load."""

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.config.steps] if self.config else []

    @property
    def accepts_upload(self) -> bool:
        return self.config is not None and self.config.input.upload

    def check_input(self, document: Any) -> None:
        """InvalidInput, naming the field, unless `document` fits the input schema."""
        if not isinstance(document, dict):
            raise InvalidInput(f"the input of pipeline '{self.name}' must be a JSON object")
        if self.input_model is None:
            return
        try:
            self.input_model.model_validate(document)
        except ValidationError as exc:
            problem = describe(exc, self.input_model, at="input")
            raise InvalidInput(f"pipeline '{self.name}': {problem}") from None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "description": self.config.description if self.config else "",
            "reason": self.reason,
            "input": {"schema": self.input_schema, "upload": self.accepts_upload},
            "options": self.config.options if self.config else {},
            "steps": [
                {
                    "name": s.name,
                    "kind": "model" if s.model else "function",
                    "model": s.model,
                    "timeout_s": s.timeout_s,
                    "max_attempts": s.retry.max_attempts if s.retry else 1,
                }
                for s in (self.config.steps if self.config else [])
            ],
        }


class PipelineRegistry:
    def __init__(self, repository: Path) -> None:
        self.repository = repository
        self._pipelines: dict[str, Pipeline] = {}

    def load_all(self) -> None:
        if not self.repository.is_dir():
            return
        for folder in sorted(self.repository.iterdir()):
            if folder.is_dir() and (folder / PIPELINE_FILE).is_file():
                self._pipelines[folder.name] = self._load(folder)

    def _load(self, folder: Path) -> Pipeline:
        try:
            if not _NAME.match(folder.name):
                raise PipelineLoadError(f"'{folder.name}' is not a valid pipeline name")
            config = _read_config(folder / PIPELINE_FILE)
            wanted = [s.function for s in config.steps if s.function]
            schema_name = config.input.schema_
            needs_module = wanted or schema_name or config.options_schema
            module = _import_steps(folder, folder.name) if needs_module else None
            if config.options_schema:
                # A bad option fails the load, not every job that reads it.
                _check_options(_pydantic_model(module, config.options_schema), config.options)
            functions: dict[str, StepFunction] = {}
            for name in wanted:
                function = getattr(module, name, None)
                if not callable(function):
                    raise PipelineLoadError(f"{STEPS_FILE} has no function {name}()")
                functions[name] = function
            input_model = _input_model(module, schema_name) if schema_name else None
        except PipelineLoadError as exc:
            log.error("pipeline %s failed to load: %s", folder.name, exc.message)
            return Pipeline(folder.name, folder, PipelineState.FAILED, reason=exc.message)
        log.info("pipeline %s: READY, steps %s", folder.name, [s.name for s in config.steps])
        pipeline = Pipeline(folder.name, folder, PipelineState.READY, config, functions)
        if input_model is not None:
            pipeline.input_model = input_model
            pipeline.input_schema = input_model.model_json_schema()
        return pipeline

    def all(self) -> list[Pipeline]:
        return [self._pipelines[name] for name in sorted(self._pipelines)]

    def get(self, name: str) -> Pipeline:
        pipeline = self._pipelines.get(name)
        if pipeline is None:
            raise PipelineNotFound(f"pipeline '{name}' does not exist")
        return pipeline


def _read_config(path: Path) -> PipelineConfig:
    return read_toml_config(path, PipelineConfig, PipelineLoadError)


def _pydantic_model(module: ModuleType | None, name: str) -> type[BaseModel]:
    model = getattr(module, name, None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise PipelineLoadError(f"{STEPS_FILE} has no pydantic model {name}")
    return model


def _check_options(model: type[BaseModel], options: dict[str, Any]) -> None:
    try:
        model.model_validate(options)
    except ValidationError as exc:
        lines = problems(exc, model, lambda loc: f"{PIPELINE_FILE}: options.{dotted(loc)}")
        raise PipelineLoadError("; ".join(lines)) from None


def _input_model(module: ModuleType | None, name: str) -> type[BaseModel]:
    try:
        model = _pydantic_model(module, name)
    except PipelineLoadError as exc:
        raise PipelineLoadError(f"[input] schema: {exc.message}") from None
    try:
        model.model_json_schema()  # a model pydantic cannot describe fails here, not later
    except Exception as exc:
        log.error("pipeline input schema %s", name, exc_info=exc)
        raise PipelineLoadError(
            f"[input] schema: {name} has no JSON Schema ({type(exc).__name__})"
        ) from exc
    return model


def _import_steps(folder: Path, name: str) -> ModuleType:
    return import_user_module(
        folder / STEPS_FILE, module_name_for("steps", name), PipelineLoadError
    )

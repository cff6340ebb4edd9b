"""The one validator, against versions loaded from a real (small) model repository."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from modelplex.core.registry import ModelRegistry, ServedVersion
from modelplex.core.types import InferenceRequest
from modelplex.core.validation import check, check_row_count, trusted
from modelplex.errors import Conflict, InvalidInput
from modelplex.settings import Settings
from tests.helpers import write_model, write_python_model

TWO_INPUTS = """
runtime = "python"
[[inputs]]
name = "a"
datatype = "INT32"
shape = [-1, 2]
[[inputs]]
name = "b"
datatype = "BYTES"
shape = [1]
[[outputs]]
name = "n"
datatype = "INT64"
shape = []
[batching]
max_queue_size = 8
"""
TWO_INPUTS_CODE = """
class Model:
    def predict(self, batch):
        return {"n": batch["a"].sum(axis=(1, 2))}
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelRegistry]:
    repo = tmp_path_factory.mktemp("validation-repo")
    write_python_model(repo, "doubler")
    write_model(repo, "pair", TWO_INPUTS, TWO_INPUTS_CODE)
    tmp = tmp_path_factory.mktemp("validation-state")
    registry = ModelRegistry(repo, Settings(data_dir=tmp / "data", cache_dir=tmp / "cache"))
    registry.load_all()
    yield registry
    asyncio.run(registry.close())


def request(model: str, inputs: dict[str, Any], **options: Any) -> InferenceRequest:
    return InferenceRequest(model, inputs, arrived_at=time.monotonic(), **options)


def bytes_column(*values: bytes) -> np.ndarray:
    column = np.empty((len(values), 1), dtype=object)
    column[:, 0] = values
    return column


def test_a_fitting_request_is_counted(registry: ModelRegistry) -> None:
    served = registry.get("pair")
    a = np.zeros((3, 5, 2), dtype=np.int32)  # -1: any length
    checked = check(served, request("pair", {"a": a, "b": bytes_column(b"x", b"y", b"z")}))
    assert checked.rows == 3
    assert checked.served is served


@pytest.mark.parametrize(
    ("inputs", "options", "message"),
    [
        ({"x": np.zeros((1, 2), np.float32), "z": np.zeros(1)}, {}, "unknown inputs ['z']"),
        ({}, {}, "missing inputs ['x']"),
        ({"x": np.float32(1.0).reshape(())}, {}, "no instance dimension"),
        ({"x": np.zeros((1, 2), np.float64)}, {}, "datatype FP64; the model takes FP32"),
        (
            {"x": np.zeros((1, 3), np.float32)},
            {},
            "shape [1, 3], instances of shape [3]; the model takes instances of shape [2]",
        ),
        ({"x": np.zeros((0, 2), np.float32)}, {}, "no instances"),
        ({"x": np.zeros((1, 2), np.float32)}, {"top_k": 0}, "top_k"),
        ({"x": np.zeros((1, 2), np.float32)}, {"top_k": True}, "top_k"),
        ({"x": np.zeros((1, 2), np.float32)}, {"outputs": ["y", "w"]}, "unknown outputs ['w']"),
    ],
)
def test_each_rule_names_what_does_not_fit(
    registry: ModelRegistry, inputs: dict[str, Any], options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        check(registry.get("doubler"), request("doubler", inputs, **options))
    assert message in refused.value.message


def test_inputs_must_agree_on_the_number_of_instances(registry: ModelRegistry) -> None:
    inputs = {"a": np.zeros((2, 1, 2), np.int32), "b": bytes_column(b"x")}
    with pytest.raises(InvalidInput, match="same number of instances"):
        check(registry.get("pair"), request("pair", inputs))


def test_the_row_cap_is_the_version_queue_bound(registry: ModelRegistry) -> None:
    served: ServedVersion = registry.get("pair")
    assert served.max_rows == 8
    check_row_count(served, 8)
    with pytest.raises(InvalidInput, match="accepts at most 8 per request"):
        check_row_count(served, 9)
    inputs = {"a": np.zeros((9, 1, 2), np.int32), "b": bytes_column(*[b"x"] * 9)}
    with pytest.raises(InvalidInput, match="accepts at most 8 per request"):
        check(served, request("pair", inputs))


def test_a_stored_request_is_trusted_only_with_its_signature(registry: ModelRegistry) -> None:
    served = registry.get("doubler")
    stored = request("doubler", {"x": np.zeros((2, 2), np.float32)})
    assert trusted(served, stored, served.signature).rows == 2
    with pytest.raises(Conflict, match="changed its signature"):
        trusted(served, stored, "0" * 16)


def test_signatures_differ_between_contracts(registry: ModelRegistry) -> None:
    assert registry.get("doubler").signature != registry.get("pair").signature
    assert len(registry.get("doubler").signature) == 16

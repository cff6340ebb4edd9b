from __future__ import annotations

import numpy as np
import pytest

from modelplex.core.tensors import Datatype, TensorSpec, to_tensor
from modelplex.errors import InvalidInput


def test_numbers_become_the_declared_dtype() -> None:
    tensor = to_tensor([[1, 2.5], [3, 4]], TensorSpec("x", Datatype.FP32, (2,)))
    assert tensor.dtype == np.float32
    assert tensor.shape == (2, 2)


def test_wildcard_dimensions() -> None:
    spec = TensorSpec("x", Datatype.INT64, (-1, 2))
    assert to_tensor([[[1, 2], [3, 4], [5, 6]]], spec).shape == (1, 3, 2)


@pytest.mark.parametrize(
    ("values", "spec", "message"),
    [
        ([[1.5, 2]], TensorSpec("x", Datatype.INT32, (2,)), "expects integers"),
        ([[300, 1]], TensorSpec("x", Datatype.UINT8, (2,)), "out of range"),
        ([[True, False]], TensorSpec("x", Datatype.FP32, (2,)), "expects numbers"),
        ([[1, 0]], TensorSpec("x", Datatype.BOOL, (2,)), "expects booleans"),
        ([["a", "b"]], TensorSpec("x", Datatype.FP32, (2,)), "expects numbers"),
        ([[1, 2], [3]], TensorSpec("x", Datatype.FP32, (2,)), "ragged"),
        ([[1, 2, 3]], TensorSpec("x", Datatype.FP32, (2,)), "shape [3]"),
        ([5], TensorSpec("x", Datatype.BYTES, ()), "expects a string"),
        ([{"b64": "@@"}], TensorSpec("x", Datatype.BYTES, ()), "not valid base64"),
    ],
)
def test_lossy_or_malformed_values_are_refused(
    values: list[object], spec: TensorSpec, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("]", r"\]")):
        to_tensor(values, spec)


def test_bytes_from_text_and_base64() -> None:
    tensor = to_tensor(["hé", {"b64": "AAEC"}], TensorSpec("x", Datatype.BYTES, ()))
    assert tensor.tolist() == ["hé".encode(), b"\x00\x01\x02"]


def test_datatype_round_trip_through_numpy() -> None:
    for datatype in Datatype:
        assert Datatype.from_numpy(datatype.numpy_dtype) is datatype

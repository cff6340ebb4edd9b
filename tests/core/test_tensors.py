from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from modelplex.core.tensors import (
    Datatype,
    TensorSpec,
    bytes_batch,
    cast_checked,
    decode_base64,
    row_to_json,
    to_tensor,
)
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
        ([5], TensorSpec("x", Datatype.BYTES, ()), "expects strings"),
        ([[1e39, 1]], TensorSpec("x", Datatype.FP32, (2,)), "out of range for FP32"),
        ([[70000, 1]], TensorSpec("x", Datatype.FP16, (2,)), "out of range for FP16"),
        ([["a", "b"], ["c"]], TensorSpec("x", Datatype.BYTES, (-1,)), "ragged"),
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


@pytest.mark.parametrize(
    ("shape", "values", "expected"),
    [
        ((), ["a", "b"], (2,)),
        ((1,), [["a"], ["b"]], (2, 1)),
        ((-1,), [["a", "b", "c"], ["d", "e", "f"]], (2, 3)),
    ],
)
def test_bytes_shapes(
    shape: tuple[int, ...], values: list[object], expected: tuple[int, ...]
) -> None:
    tensor = to_tensor(values, TensorSpec("x", Datatype.BYTES, shape))
    assert tensor.shape == expected
    assert tensor.reshape(-1)[0] == b"a"


@pytest.mark.parametrize("shape", [(), (1,), (-1,)])
def test_uploads_fit_every_scalar_bytes_shape(shape: tuple[int, ...]) -> None:
    tensor = bytes_batch([b"x", b"y"], TensorSpec("x", Datatype.BYTES, shape))
    assert tensor.reshape(-1).tolist() == [b"x", b"y"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("AAEC", b"\x00\x01\x02"),
        ("AAE", b"\x00\x01"),  # unpadded
        ("AA\nEC\n", b"\x00\x01\x02"),  # line-wrapped
        ("-_-_", base64.b64decode("+/+/")),  # URL-safe
    ],
)
def test_base64_variants(text: str, expected: bytes) -> None:
    assert decode_base64(text) == expected


@pytest.mark.parametrize("text", ["AA*C", "A", "-_*_"])
def test_base64_junk_is_refused_not_skipped(text: str) -> None:
    with pytest.raises(InvalidInput, match="not valid base64"):
        decode_base64(text)


def test_binary_bytes_outputs_render_as_b64() -> None:
    tensor = np.empty(2, dtype=object)
    tensor[:] = [b"text", b"\xff\xfe"]
    assert row_to_json(tensor, 0) == "text"
    assert row_to_json(tensor, 1) == {"b64": "//4="}


@pytest.mark.parametrize(
    ("raw", "datatype", "fragment"),
    [
        (np.array([1.5]), Datatype.INT32, "integers"),
        (np.array([True]), Datatype.FP32, "numbers"),
        (np.array([1]), Datatype.BOOL, "booleans"),
        (np.array([-1]), Datatype.UINT64, "out of range"),
        (np.array([2**64 - 1], dtype=np.uint64), Datatype.INT64, "out of range"),
        (np.array([70000.0]), Datatype.FP16, "out of range"),
        (np.array([1e300]), Datatype.FP32, "out of range"),
    ],
)
def test_cast_checked_refuses_lossy_casts(raw: Any, datatype: Datatype, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=fragment):
        cast_checked(raw, datatype, "input 'x'")


def test_cast_checked_keeps_values_a_client_sent() -> None:
    sent = np.array([np.nan, np.inf, 1.0])
    cast = cast_checked(sent, Datatype.FP32, "input 'x'")
    assert cast.dtype == np.float32
    assert np.isnan(cast[0])
    assert np.isinf(cast[1])
    assert cast[2] == 1.0
    big = cast_checked(np.array([2**64 - 1], dtype=np.uint64), Datatype.UINT64, "x")
    assert int(big[0]) == 2**64 - 1

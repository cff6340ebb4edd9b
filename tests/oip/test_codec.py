"""`modelplex.oip.codec`: the protocol's tensor encodings (JSON data, raw bytes, BYTES framing)."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest

from modelplex.core.tensors import Datatype
from modelplex.errors import InvalidInput, PayloadTooLarge
from modelplex.oip import codec

WHAT = "input 'x'"

# struct's little-endian format letter and sample values (the type's extremes) per datatype.
NUMERIC: dict[Datatype, tuple[str, list[Any]]] = {
    Datatype.BOOL: ("?", [True, False, True, True]),
    Datatype.UINT8: ("B", [0, 1, 200, 255]),
    Datatype.UINT16: ("H", [0, 1, 40_000, 2**16 - 1]),
    Datatype.UINT32: ("I", [0, 1, 3_000_000_000, 2**32 - 1]),
    Datatype.UINT64: ("Q", [0, 1, 2**63, 2**64 - 1]),
    Datatype.INT8: ("b", [-128, -1, 0, 127]),
    Datatype.INT16: ("h", [-(2**15), -1, 0, 2**15 - 1]),
    Datatype.INT32: ("i", [-(2**31), -1, 0, 2**31 - 1]),
    Datatype.INT64: ("q", [-(2**63), -1, 0, 2**63 - 1]),
    Datatype.FP16: ("e", [-2.5, 0.0, 0.5, 65504.0]),
    Datatype.FP32: ("f", [-1.5, 0.0, 0.25, 2.0**127]),
    Datatype.FP64: ("d", [-1.5, 0.0, 1e-300, 1.7e308]),
}


def test_numeric_samples_cover_every_datatype_but_bytes() -> None:
    assert set(NUMERIC) == set(Datatype) - {Datatype.BYTES}


# -- datatype_of ------------------------------------------------------------------


@pytest.mark.parametrize("name", [d.value for d in Datatype])
def test_datatype_of_every_protocol_name(name: str) -> None:
    assert codec.datatype_of(name) is Datatype(name)


def test_datatype_of_is_case_insensitive() -> None:
    assert codec.datatype_of("fp32") is Datatype.FP32
    assert codec.datatype_of("Bytes") is Datatype.BYTES


@pytest.mark.parametrize("name", ["FLOAT", "", "STRING", "FP 32"])
def test_datatype_of_unknown_name(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        codec.datatype_of(name)
    assert caught.value.message.startswith(f"unknown datatype '{name}'; expected one of [")
    assert "'BOOL'" in caught.value.message
    assert "'BYTES'" in caught.value.message


# -- check_shape ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ([], ()),
        ([0], (0,)),
        ([2, 3], (2, 3)),
        ((4, 1), (4, 1)),
        ([codec.MAX_DIM], (codec.MAX_DIM,)),
        ([1] * codec.MAX_DIMS, (1,) * codec.MAX_DIMS),
    ],
)
def test_check_shape_accepts(shape: Any, expected: tuple[int, ...]) -> None:
    assert codec.check_shape(shape, WHAT) == expected


@pytest.mark.parametrize(
    "shape",
    [
        [-1],
        [codec.MAX_DIM + 1],
        [True],
        [2, False],
        [1.0],
        ["3"],
        [None],
        "12",
        12,
        None,
        {"a": 1},
    ],
)
def test_check_shape_refuses_non_integer_or_out_of_bounds_dimensions(shape: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        codec.check_shape(shape, WHAT)
    assert caught.value.message == (
        f"input 'x': shape must be a list of integers between 0 and {codec.MAX_DIM}"
    )


def test_check_shape_refuses_too_many_dimensions() -> None:
    with pytest.raises(InvalidInput) as caught:
        codec.check_shape([1] * (codec.MAX_DIMS + 1), WHAT)
    assert caught.value.message == "input 'x': a shape has at most 32 dimensions"


def test_bounds() -> None:
    assert codec.MAX_DIMS == 32
    assert codec.MAX_DIM == 2**40


# -- element_count and reshape ------------------------------------------------------


def test_element_count() -> None:
    assert codec.element_count(()) == 1
    assert codec.element_count((3, 4)) == 12
    assert codec.element_count((2, 0, 5)) == 0
    assert codec.element_count((codec.MAX_DIM,) * 2) == 2**80  # exact, no int64 overflow


def test_reshape_of_a_shape_numpy_cannot_index() -> None:
    with pytest.raises(InvalidInput) as caught:
        codec.reshape(np.empty(0, np.float32), (0, codec.MAX_DIM, codec.MAX_DIM), WHAT)
    assert caught.value.message == (
        "input 'x': shape [0, 1099511627776, 1099511627776] is too large"
    )


# -- from_json --------------------------------------------------------------------


def test_from_json_flat_data_takes_the_shape() -> None:
    tensor = codec.from_json([1, 2, 3, 4, 5, 6], Datatype.FP32, (2, 3), WHAT)
    assert tensor.dtype == np.float32
    assert tensor.shape == (2, 3)
    assert tensor.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


def test_from_json_nested_data_is_read_row_major() -> None:
    nested = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    tensor = codec.from_json(nested, Datatype.INT64, (2, 4), WHAT)
    assert tensor.dtype == np.int64
    assert tensor.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_from_json_scalar_is_a_zero_dimensional_tensor() -> None:
    tensor = codec.from_json(7, Datatype.INT32, (), WHAT)
    assert tensor.shape == ()
    assert tensor.dtype == np.int32
    assert int(tensor) == 7


def test_from_json_booleans() -> None:
    tensor = codec.from_json([True, False], Datatype.BOOL, (2,), WHAT)
    assert tensor.dtype == np.bool_
    assert tensor.tolist() == [True, False]


def test_from_json_empty_tensor() -> None:
    tensor = codec.from_json([], Datatype.FP32, (0, 3), WHAT)
    assert tensor.shape == (0, 3)
    assert tensor.dtype == np.float32


@pytest.mark.parametrize(
    ("data", "shape", "message"),
    [
        ([1, 2, 3], (2, 2), "input 'x': 3 values for shape [2, 2]"),
        ([[1, 2], [3, 4], [5, 6]], (2, 2), "input 'x': 6 values for shape [2, 2]"),
        ([], (1,), "input 'x': 0 values for shape [1]"),
        (5, (2,), "input 'x': 1 values for shape [2]"),
    ],
)
def test_from_json_wrong_value_count(data: Any, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        codec.from_json(data, Datatype.FP32, shape, WHAT)
    assert caught.value.message == message


def _nested(depth: int) -> Any:
    """`depth` lists around the number 1, built without recursion."""
    data: Any = 1
    for _ in range(depth):
        data = [data]
    return data


def test_from_json_nesting_up_to_the_dimension_limit() -> None:
    tensor = codec.from_json(_nested(codec.MAX_DIMS), Datatype.INT32, (1,), WHAT)
    assert tensor.tolist() == [1]


@pytest.mark.parametrize("depth", [codec.MAX_DIMS + 1, 100_000])
def test_from_json_nesting_deeper_than_the_limit_is_refused_without_recursion(depth: int) -> None:
    with pytest.raises(InvalidInput) as caught:  # a RecursionError would fail this test
        codec.from_json(_nested(depth), Datatype.INT32, (1,), WHAT)
    assert caught.value.message == "input 'x': data is nested deeper than 32 levels"


def test_from_json_bytes_from_strings_and_bytes() -> None:
    tensor = codec.from_json([["héllo", b"\xff\x00"], ["", "z"]], Datatype.BYTES, (2, 2), WHAT)
    assert tensor.dtype == object
    assert tensor.shape == (2, 2)
    assert tensor.tolist() == [["héllo".encode(), b"\xff\x00"], [b"", b"z"]]


@pytest.mark.parametrize("value", [1, 1.5, None, True, {"b64": "AA=="}])
def test_from_json_bytes_must_be_strings(value: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        codec.from_json(["ok", value], Datatype.BYTES, (2,), WHAT)
    assert caught.value.message == "input 'x': BYTES data must be strings"


@pytest.mark.parametrize(
    ("data", "datatype", "message"),
    [
        ([1.5, 2], Datatype.INT32, "input 'x' expects integers (INT32)"),
        ([256], Datatype.UINT8, "input 'x' has values out of range for UINT8"),
        ([-1], Datatype.UINT64, "input 'x' has values out of range for UINT64"),
        ([1e39], Datatype.FP32, "input 'x' has values out of range for FP32"),
        (["1"], Datatype.FP32, "input 'x' expects numbers of datatype FP32"),
        ([True], Datatype.FP64, "input 'x' expects numbers of datatype FP64"),
        ([1], Datatype.BOOL, "input 'x' expects booleans (BOOL)"),
        ([2**70], Datatype.INT64, "input 'x' expects numbers of datatype INT64"),
    ],
)
def test_from_json_refuses_lossy_conversions(
    data: list[Any], datatype: Datatype, message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        codec.from_json(data, datatype, (len(data),), WHAT)
    assert caught.value.message == message


@pytest.mark.parametrize("data", [[True, 1], [2, False], [1.5, True]])
@pytest.mark.parametrize("datatype", [Datatype.FP64, Datatype.INT32, Datatype.BOOL])
def test_from_json_refuses_booleans_mixed_with_numbers(data: list[Any], datatype: Datatype) -> None:
    with pytest.raises(InvalidInput) as caught:
        codec.from_json(data, datatype, (2,), WHAT)
    assert caught.value.message == (
        f"input 'x' expects numbers of datatype {datatype}, not booleans"
    )


def test_from_json_uint64_on_both_sides_of_2_to_the_63() -> None:
    tensor = codec.from_json([1, 2**63, 2**64 - 1], Datatype.UINT64, (3,), WHAT)
    assert tensor.dtype == np.uint64
    assert tensor.tolist() == [1, 2**63, 2**64 - 1]


@pytest.mark.parametrize("data", [[-1, 2**63], [1, 2**64]])
def test_from_json_uint64_out_of_range_with_large_values(data: list[int]) -> None:
    with pytest.raises(InvalidInput) as caught:
        codec.from_json(data, Datatype.UINT64, (2,), WHAT)
    assert caught.value.message == "input 'x' has values out of range for UINT64"


@pytest.mark.parametrize(
    ("data", "shape"),
    [
        ([[1, 2], [3]], (3,)),
        ([[1], [2, 3]], (3,)),
        ([1, [2]], (2,)),
        ([[1], 2], (2,)),
        ([[], [1]], (1,)),
        ([[[1, 2]], [3, 4]], (4,)),
        ([[[1]], [[]]], (1,)),
    ],
)
def test_from_json_refuses_ragged_nesting_even_when_the_count_fits(
    data: Any, shape: tuple[int, ...]
) -> None:
    with pytest.raises(InvalidInput) as caught:
        codec.from_json(data, Datatype.FP32, shape, WHAT)
    assert caught.value.message == "input 'x': data is ragged (it must be nested like a tensor)"


def test_from_json_regular_nesting_of_empty_lists() -> None:
    tensor = codec.from_json([[], []], Datatype.FP32, (2, 0), WHAT)
    assert tensor.shape == (2, 0)


@pytest.mark.parametrize("depth", [65, 1_000, 100_000])
def test_from_json_deep_bytes_data_is_invalid_input(depth: int) -> None:
    data: Any = "a"
    for _ in range(depth):
        data = [data]
    with pytest.raises(InvalidInput) as caught:  # not numpy's 64-dimension ValueError
        codec.from_json(data, Datatype.BYTES, (1,), WHAT)
    assert caught.value.message == "input 'x': data is nested deeper than 32 levels"


def test_from_json_uint64_at_the_top_of_the_range() -> None:
    tensor = codec.from_json([2**63, 2**64 - 1], Datatype.UINT64, (2,), WHAT)
    assert tensor.dtype == np.uint64
    assert tensor.tolist() == [2**63, 2**64 - 1]


# -- to_json ----------------------------------------------------------------------


def test_to_json_numbers_are_flat_row_major() -> None:
    tensor = np.array([[1.5, 2.0], [3.0, 4.25]], dtype=np.float32)
    assert codec.to_json(tensor) == [1.5, 2.0, 3.0, 4.25]
    assert codec.to_json(np.array([[1, 2], [3, 4]], dtype=np.int64).T) == [1, 3, 2, 4]
    assert codec.to_json(np.array(True)) == [True]


def test_to_json_bytes_as_text() -> None:
    tensor = np.empty((2, 1), dtype=object)
    tensor[:, 0] = ["héllo".encode(), b""]
    assert codec.to_json(tensor) == ["héllo", ""]


def test_to_json_refuses_bytes_that_are_not_utf8() -> None:
    tensor = np.empty(2, dtype=object)
    tensor[:] = [b"fine", b"\xff\xfe"]
    with pytest.raises(InvalidInput) as caught:
        codec.to_json(tensor)
    assert caught.value.message == "a BYTES output is not UTF-8: ask for it as binary data"


# -- from_raw / to_raw: numbers -------------------------------------------------


@pytest.mark.parametrize("datatype", list(NUMERIC))
def test_raw_round_trip_of_every_numeric_datatype(datatype: Datatype) -> None:
    letter, values = NUMERIC[datatype]
    raw = struct.pack(f"<{len(values)}{letter}", *values)  # independent of numpy
    tensor = codec.from_raw(raw, datatype, (2, 2), WHAT)
    assert tensor.dtype == datatype.numpy_dtype
    assert tensor.dtype.isnative
    assert tensor.shape == (2, 2)
    assert tensor.reshape(-1).tolist() == values
    assert codec.to_raw(tensor) == raw


@pytest.mark.parametrize("datatype", list(NUMERIC))
def test_raw_of_the_wrong_length_is_refused(datatype: Datatype) -> None:
    letter, values = NUMERIC[datatype]
    raw = struct.pack(f"<{len(values)}{letter}", *values)
    size = datatype.numpy_dtype.itemsize
    with pytest.raises(InvalidInput) as caught:
        codec.from_raw(raw[:-1], datatype, (2, 2), WHAT)
    assert caught.value.message == (
        f"input 'x': {len(raw) - 1} bytes for shape [2, 2] of {datatype} (expected {4 * size})"
    )


def test_raw_float_special_values_survive() -> None:
    raw = struct.pack("<3f", float("inf"), float("-inf"), float("nan"))
    tensor = codec.from_raw(raw, Datatype.FP32, (3,), WHAT)
    assert tensor[0] == np.inf
    assert tensor[1] == -np.inf
    assert np.isnan(tensor[2])
    assert codec.to_raw(tensor) == raw


def test_from_raw_copies_the_buffer() -> None:
    raw = bytearray(struct.pack("<2i", 1, 2))
    tensor = codec.from_raw(bytes(raw), Datatype.INT32, (2,), WHAT)
    assert tensor.flags.writeable  # models may write in place
    tensor[0] = 9
    assert tensor.tolist() == [9, 2]


def test_from_raw_empty_tensor() -> None:
    tensor = codec.from_raw(b"", Datatype.FP64, (0, 4), WHAT)
    assert tensor.shape == (0, 4)
    assert tensor.dtype == np.float64


def test_to_raw_is_little_endian_whatever_the_input_order() -> None:
    big = np.array([1, -2], dtype=">i4")
    assert codec.to_raw(big) == b"\x01\x00\x00\x00\xfe\xff\xff\xff"
    assert codec.to_raw(big.astype("<i4")) == codec.to_raw(big)


def test_to_raw_is_row_major_for_non_contiguous_tensors() -> None:
    transposed = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int16).T  # [[1,4],[2,5],[3,6]]
    assert codec.to_raw(transposed) == struct.pack("<6h", 1, 4, 2, 5, 3, 6)
    fortran = np.asfortranarray(np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float64))
    assert codec.to_raw(fortran) == struct.pack("<4d", 1.0, 2.0, 3.0, 4.0)


# -- from_raw / to_raw: BYTES -----------------------------------------------------


def _frame(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def test_bytes_framing_is_a_four_byte_little_endian_length() -> None:
    long = bytes(range(256)) + b"x" * 44  # 300 bytes: the length needs two bytes
    tensor = np.empty(3, dtype=object)
    tensor[:] = [b"ab", b"", long]
    raw = codec.to_raw(tensor)
    assert raw == b"\x02\x00\x00\x00ab" + b"\x00\x00\x00\x00" + b"\x2c\x01\x00\x00" + long


def test_bytes_raw_round_trip() -> None:
    items = [b"ab", b"", b"\xff\x00\x01", "é".encode()]
    raw = _frame(*items)
    tensor = codec.from_raw(raw, Datatype.BYTES, (2, 2), WHAT)
    assert tensor.dtype == object
    assert tensor.shape == (2, 2)
    assert tensor.reshape(-1).tolist() == items
    assert codec.to_raw(tensor) == raw


def test_to_raw_of_bytes_encodes_text_elements() -> None:
    tensor = np.empty(2, dtype=object)
    tensor[:] = ["hé", b"x"]
    assert codec.to_raw(tensor) == _frame("hé".encode(), b"x")


def test_split_bytes() -> None:
    assert codec.split_bytes(b"", WHAT) == []
    assert codec.split_bytes(_frame(b"", b"", b"a"), WHAT) == [b"", b"", b"a"]


@pytest.mark.parametrize("raw", [b"\x02", b"\x02\x00\x00", _frame(b"ab") + b"\x01\x00"])
def test_truncated_bytes_length_prefix(raw: bytes) -> None:
    with pytest.raises(InvalidInput) as caught:
        codec.from_raw(raw, Datatype.BYTES, (1,), WHAT)
    assert caught.value.message == "input 'x': truncated BYTES length prefix"


@pytest.mark.parametrize(
    "raw",
    [b"\x05\x00\x00\x00ab", _frame(b"ok") + b"\x01\x00\x00\x00", b"\xff\xff\xff\xff"],
)
def test_bytes_element_running_past_the_end(raw: bytes) -> None:
    with pytest.raises(InvalidInput) as caught:
        codec.from_raw(raw, Datatype.BYTES, (2,), WHAT)
    assert caught.value.message == "input 'x': a BYTES element runs past the end of the data"


def test_bytes_element_count_must_match_the_shape() -> None:
    with pytest.raises(InvalidInput) as caught:
        codec.from_raw(_frame(b"a", b"b", b"c"), Datatype.BYTES, (2, 2), WHAT)
    assert caught.value.message == "input 'x': 3 BYTES elements for shape [2, 2]"


def test_more_bytes_elements_than_the_shape_stops_the_walk() -> None:
    raw = _frame(b"a", b"bc") * 10
    with pytest.raises(InvalidInput) as caught:
        codec.from_raw(raw, Datatype.BYTES, (2, 2), WHAT)
    assert caught.value.message == "input 'x': more than 4 BYTES elements for shape [2, 2]"
    assert len(codec.split_bytes(raw, WHAT, 4)) == 5  # one past the shape, not all 20


@pytest.mark.parametrize("size", [0, 1, 7])
def test_bytes_of_one_length_decode_alike(size: int) -> None:
    items = [bytes([i % 256]) * size for i in range(1000)]
    tensor = codec.from_raw(_frame(*items), Datatype.BYTES, (10, 100), WHAT)
    assert tensor.dtype == object
    assert tensor.reshape(-1).tolist() == items
    assert codec.to_raw(tensor) == _frame(*items)


def test_bytes_uniform_stride_that_is_not_uniform_framing() -> None:
    # Two 8-byte strides whose second prefix is not 4: decoded element by element.
    raw = _frame(b"abcd") + _frame(b"", b"")
    with pytest.raises(InvalidInput) as caught:
        codec.from_raw(raw, Datatype.BYTES, (2,), WHAT)
    assert caught.value.message == "input 'x': more than 2 BYTES elements for shape [2]"


def test_a_flood_of_empty_bytes_elements_decodes_in_one_step() -> None:
    count = 4 * 1024 * 1024  # 16 MiB of empty elements
    tensor = codec.from_raw(bytes(4 * count), Datatype.BYTES, (count,), WHAT)
    assert tensor.shape == (count,)
    assert tensor[0] == tensor[-1] == b""


@pytest.mark.parametrize("value", [2, 255])
def test_bool_raw_bytes_must_be_zero_or_one(value: int) -> None:
    with pytest.raises(InvalidInput) as caught:
        codec.from_raw(bytes([1, 0, value]), Datatype.BOOL, (3,), WHAT)
    assert caught.value.message == "input 'x': BOOL data must be bytes 0 or 1"


# -- the element budget -------------------------------------------------------------


def test_the_element_budget_counts_bytes_elements_over_all_inputs() -> None:
    budget = codec.ElementBudget(10)
    assert budget.charge(Datatype.FP32, (1000, 64), WHAT) == 64_000  # numbers are free
    budget.charge(Datatype.BYTES, (2, 3), WHAT)
    budget.charge(Datatype.BYTES, (4,), "input 'y'")
    with pytest.raises(PayloadTooLarge) as caught:
        budget.charge(Datatype.BYTES, (1,), "input 'z'")
    assert caught.value.message == "input 'z': a request carries at most 10 BYTES elements"


def test_the_element_budget_refuses_a_hostile_shape_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge):
        codec.ElementBudget(10).charge(Datatype.BYTES, (codec.MAX_DIM,) * 3, WHAT)

"""Tensor encodings of the protocol: JSON data, raw little-endian bytes, BYTES framing."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from modelplex.core.tensors import Array, Datatype, cast_checked
from modelplex.errors import InvalidInput

_LENGTH = struct.Struct("<I")


def datatype_of(name: str) -> Datatype:
    try:
        return Datatype(name.upper())
    except ValueError:
        raise InvalidInput(
            f"unknown datatype '{name}'; expected one of {[d.value for d in Datatype]}"
        ) from None


# Bounds well past any tensor that fits a request body, so a hostile shape is
# refused with a clear message instead of overflowing numpy's index arithmetic.
MAX_DIMS = 32
MAX_DIM = 2**40


def check_shape(shape: Any, what: str) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape
    ):
        raise InvalidInput(f"{what}: shape must be a list of integers between 0 and {MAX_DIM}")
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"{what}: a shape has at most {MAX_DIMS} dimensions")
    return tuple(shape)


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)  # Python ints: exact for any shape check_shape lets through


def from_json(data: Any, datatype: Datatype, shape: tuple[int, ...], what: str) -> Array:
    """`data` (flat or nested, row-major) as a tensor of `shape`."""
    flat = _flatten(data, what)
    if len(flat) != element_count(shape):
        raise InvalidInput(f"{what}: {len(flat)} values for shape {list(shape)}")
    if datatype is Datatype.BYTES:
        array = np.empty(len(flat), dtype=object)
        for i, value in enumerate(flat):
            if not isinstance(value, str | bytes):
                raise InvalidInput(f"{what}: BYTES data must be strings")
            array[i] = value.encode() if isinstance(value, str) else value
        return reshape(array, shape, what)
    try:
        raw = np.asarray(flat)
    except (ValueError, OverflowError):
        raise InvalidInput(f"{what}: data is not numeric") from None
    return reshape(cast_checked(raw, datatype, what), shape, what)


def _flatten(data: Any, what: str) -> list[Any]:
    """Nested lists as one row-major list, without recursion (nesting depth is the
    client's choice)."""
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) >= MAX_DIMS:
                    raise InvalidInput(f"{what}: data is nested deeper than {MAX_DIMS} levels")
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def reshape(array: Array, shape: tuple[int, ...], what: str) -> Array:
    try:
        return array.reshape(shape)
    except ValueError:  # e.g. zero elements in a shape numpy cannot index
        raise InvalidInput(f"{what}: shape {list(shape)} is too large") from None


def from_raw(raw: bytes, datatype: Datatype, shape: tuple[int, ...], what: str) -> Array:
    """Little-endian raw bytes (BYTES: 4-byte length prefixes) as a tensor of `shape`."""
    count = element_count(shape)
    if datatype is Datatype.BYTES:
        items = split_bytes(raw, what)
        if len(items) != count:
            raise InvalidInput(f"{what}: {len(items)} BYTES elements for shape {list(shape)}")
        array = np.empty(count, dtype=object)
        array[:] = items
        return reshape(array, shape, what)
    dtype = datatype.numpy_dtype.newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"{what}: {len(raw)} bytes for shape {list(shape)} of {datatype} "
            f"(expected {count * dtype.itemsize})"
        )
    # A copy in native order: the buffer is the request's, and models may write in place.
    array = np.frombuffer(raw, dtype=dtype).astype(datatype.numpy_dtype)
    return reshape(array, shape, what)


def split_bytes(raw: bytes, what: str) -> list[bytes]:
    items: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidInput(f"{what}: truncated BYTES length prefix")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidInput(f"{what}: a BYTES element runs past the end of the data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return items


def to_raw(tensor: Array) -> bytes:
    """A tensor as protocol raw bytes."""
    if tensor.dtype == object:
        parts = []
        for value in tensor.reshape(-1):
            data = value if isinstance(value, bytes) else str(value).encode()
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(tensor, dtype=tensor.dtype.newbyteorder("<")).tobytes()


def to_json(tensor: Array) -> list[Any]:
    """A tensor as flat JSON data (BYTES as UTF-8 text where possible)."""
    if tensor.dtype == object:
        out: list[Any] = []
        for value in tensor.reshape(-1):
            if isinstance(value, bytes):
                try:
                    out.append(value.decode())
                except UnicodeDecodeError:
                    raise InvalidInput(
                        "a BYTES output is not UTF-8: ask for it as binary data"
                    ) from None
            else:
                out.append(value)
        return out
    flat: list[Any] = tensor.reshape(-1).tolist()
    return flat

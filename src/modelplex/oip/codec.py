"""Tensor encodings of the protocol: JSON data, raw little-endian bytes, BYTES framing."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelplex.core.rawtensors import element_count, from_raw, reshape, split_bytes, to_raw
from modelplex.core.tensors import Array, Datatype, cast_checked
from modelplex.errors import InvalidInput

__all__ = ["element_count", "from_raw", "reshape", "split_bytes", "to_raw"]


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

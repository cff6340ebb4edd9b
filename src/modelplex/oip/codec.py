"""Tensor encodings of the protocol: JSON data, raw little-endian bytes, BYTES framing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from modelplex.core.rawtensors import element_count, from_raw, reshape, split_bytes, to_raw
from modelplex.core.tensors import Array, Datatype, cast_checked
from modelplex.errors import InvalidInput, PayloadTooLarge

__all__ = ["element_count", "from_raw", "reshape", "split_bytes", "to_raw"]

OFFLOAD_BYTES = 64 * 1024
"""Requests larger than this are decoded (and answers whose tensors hold more
are encoded) off the event loop; smaller ones cost less than the hand-off."""
OFFLOAD_ELEMENTS = 4096
"""Likewise for BYTES elements (each one a Python object to build)."""


def heavy(tensors: Iterable[Array]) -> bool:
    """Whether encoding these tensors is worth a trip off the event loop."""
    return any(
        t.nbytes > OFFLOAD_BYTES or (t.dtype == object and t.size > OFFLOAD_ELEMENTS)
        for t in tensors
    )


class ElementBudget:
    """The BYTES elements one request may still decode (`max_tensor_elements`).

    Numeric tensors are one vectorised copy bounded by the body limit; a BYTES
    element is a Python object, so a body of tiny elements would be millions of
    them. The budget is charged from the declared shape, before any decoding.
    """

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def charge(self, datatype: Datatype, shape: tuple[int, ...], what: str) -> int:
        count = element_count(shape)
        if datatype is Datatype.BYTES:
            if count > self.left:
                raise PayloadTooLarge(
                    f"{what}: a request carries at most {self.limit} BYTES elements"
                )
            self.left -= count
        return count


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
    types = set(map(type, flat))  # one C-level pass: what numpy's promotion would hide
    if datatype is Datatype.BYTES:
        if not types <= {str, bytes}:
            raise InvalidInput(f"{what}: BYTES data must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [v.encode() if type(v) is str else v for v in flat]
        return reshape(array, shape, what)
    if bool in types and types != {bool}:
        # numpy reads [True, 1] as integers; a boolean is never a number here.
        raise InvalidInput(f"{what} expects numbers of datatype {datatype}, not booleans")
    try:
        if types == {int} and datatype is Datatype.UINT64:
            # numpy guesses float64 for integers on both sides of 2**63.
            raw = np.asarray(flat, dtype=np.uint64)
        else:
            raw = np.asarray(flat)
    except OverflowError:
        raise InvalidInput(f"{what} has values out of range for {datatype}") from None
    except ValueError:
        raise InvalidInput(f"{what}: data is not numeric") from None
    return reshape(cast_checked(raw, datatype, what), shape, what)


def _flatten(data: Any, what: str) -> list[Any]:
    """Nested lists as one row-major list, without recursion (nesting depth is the
    client's choice). Nesting must be regular: every list at one depth has the same
    length and values sit at one depth only, as in a tensor."""
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    lengths = [len(data)]  # the length of the lists at each depth, from the first seen
    leaf_depth = -1
    stack = [iter(data)]
    while stack:
        depth = len(stack)  # of the items the innermost iterator yields
        for item in stack[-1]:
            if isinstance(item, list):
                if depth >= MAX_DIMS:
                    raise InvalidInput(f"{what}: data is nested deeper than {MAX_DIMS} levels")
                if depth == len(lengths):
                    lengths.append(len(item))
                if lengths[depth] != len(item) or leaf_depth == depth:
                    raise InvalidInput(f"{what}: data is ragged (it must be nested like a tensor)")
                stack.append(iter(item))
                break
            if leaf_depth != depth:
                if leaf_depth != -1 or depth < len(lengths):
                    raise InvalidInput(f"{what}: data is ragged (it must be nested like a tensor)")
                leaf_depth = depth
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

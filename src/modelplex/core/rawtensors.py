"""Tensors as raw little-endian bytes (BYTES: each element after a 4-byte length).

The Open Inference Protocol's binary encoding, which the job store also uses
to keep a checked request exactly as it was checked.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from modelplex.core.tensors import Array, Datatype
from modelplex.errors import InvalidInput

_LENGTH = struct.Struct("<I")


def element_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)  # Python ints: exact for any shape check_shape lets through


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

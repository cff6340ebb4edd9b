"""Tensors as raw little-endian bytes (BYTES: each element after a 4-byte length).

The Open Inference Protocol's binary encoding, which the job store also uses
to keep a checked request exactly as it was checked.
"""

from __future__ import annotations

import itertools
import math
import struct
import sys

import numpy as np

from modelplex.core.tensors import Array, Datatype
from modelplex.errors import InvalidInput

_LENGTH = struct.Struct("<I")
_LITTLE_ENDIAN = sys.byteorder == "little"


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
        return reshape(_bytes_array(raw, count, shape, what), shape, what)
    dtype = datatype.numpy_dtype.newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"{what}: {len(raw)} bytes for shape {list(shape)} of {datatype} "
            f"(expected {count * dtype.itemsize})"
        )
    if datatype is Datatype.BOOL and raw.count(0) + raw.count(1) != len(raw):
        # numpy would read any non-zero byte as True; the protocol's BOOL is one byte, 0 or 1.
        raise InvalidInput(f"{what}: BOOL data must be bytes 0 or 1")
    # A copy in native order: the buffer is the request's, and models may write in place.
    array = np.frombuffer(raw, dtype=dtype).astype(datatype.numpy_dtype)
    return reshape(array, shape, what)


def _bytes_array(raw: bytes, count: int, shape: tuple[int, ...], what: str) -> Array:
    array = np.empty(count, dtype=object)
    if _uniform_elements(raw, count, array):
        return array
    items = split_bytes(raw, what, count)
    if len(items) != count:
        found = f"more than {count}" if len(items) > count else str(len(items))
        raise InvalidInput(f"{what}: {found} BYTES elements for shape {list(shape)}")
    array[:] = items
    return array


def _uniform_elements(raw: bytes, count: int, out: Array) -> bool:
    """Fill `out` without walking the prefixes one by one when every element has the
    same length (fixed-size records, or a flood of empty ones), checked with numpy."""
    if count == 0 or len(raw) % count or len(raw) // count < 4:
        return False
    step = len(raw) // count
    size = step - 4
    prefixes: Array = np.ndarray((count,), dtype="<u4", buffer=raw, strides=(step,))
    if not bool((prefixes == size).all()):
        return False
    if size == 0:
        out[:] = b""  # one shared immutable object, no per-element work
    else:
        out[:] = [raw[start : start + size] for start in range(4, len(raw), step)]
    return True


def split_bytes(raw: bytes, what: str, limit: int | None = None) -> list[bytes]:
    """The elements of BYTES framing. With `limit`, the walk stops one element past
    it: a small shape cannot make a long walk over a body of tiny elements."""
    data = bytes(raw)
    end = len(data)
    stop = end // 4 + 1 if limit is None else limit + 1
    unpack = _LENGTH.unpack_from
    items: list[bytes] = []
    offset = 0
    while offset < end and len(items) < stop:
        if offset + 4 > end:
            raise InvalidInput(f"{what}: truncated BYTES length prefix")
        (length,) = unpack(data, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInput(f"{what}: a BYTES element runs past the end of the data")
        items.append(data[offset : offset + length])
        offset += length
    return items


def to_raw(tensor: Array) -> bytes:
    """A tensor as protocol raw bytes."""
    if tensor.dtype == object:
        items = [v if isinstance(v, bytes) else str(v).encode() for v in tensor.reshape(-1)]
        prefixes = map(_LENGTH.pack, map(len, items))
        return b"".join(itertools.chain.from_iterable(zip(prefixes, items)))  # noqa: B905
    if tensor.dtype.isnative and _LITTLE_ENDIAN:
        return tensor.tobytes()  # row-major whatever the layout
    return np.ascontiguousarray(tensor, dtype=tensor.dtype.newbyteorder("<")).tobytes()

"""Tensor data types and signatures.

Data type names are the Open Inference Protocol's (BOOL, INT64, FP32, BYTES,
...), so the same signature serves the native API and the standard protocol.
A `TensorSpec.shape` describes one instance (one batch row): the batch
dimension is implicit and always first in the tensors the core passes around.
BYTES tensors are numpy object arrays holding `bytes`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from modelplex.errors import InvalidInput

Array = npt.NDArray[Any]
"""A batch-first tensor."""


class Datatype(StrEnum):
    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return _TO_NUMPY[self]

    @classmethod
    def from_numpy(cls, dtype: np.dtype[Any]) -> Datatype:
        if dtype.kind in ("O", "S", "U"):
            return cls.BYTES
        try:
            return _FROM_NUMPY[np.dtype(dtype)]
        except KeyError:
            raise InvalidInput(f"unsupported tensor dtype {dtype}") from None


_TO_NUMPY: dict[Datatype, np.dtype[Any]] = {
    Datatype.BOOL: np.dtype(np.bool_),
    Datatype.UINT8: np.dtype(np.uint8),
    Datatype.UINT16: np.dtype(np.uint16),
    Datatype.UINT32: np.dtype(np.uint32),
    Datatype.UINT64: np.dtype(np.uint64),
    Datatype.INT8: np.dtype(np.int8),
    Datatype.INT16: np.dtype(np.int16),
    Datatype.INT32: np.dtype(np.int32),
    Datatype.INT64: np.dtype(np.int64),
    Datatype.FP16: np.dtype(np.float16),
    Datatype.FP32: np.dtype(np.float32),
    Datatype.FP64: np.dtype(np.float64),
    Datatype.BYTES: np.dtype(object),
}
_FROM_NUMPY: dict[np.dtype[Any], Datatype] = {
    v: k for k, v in _TO_NUMPY.items() if k is not Datatype.BYTES
}


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, data type and per-instance shape (-1 = any size) of one tensor."""

    name: str
    datatype: Datatype
    shape: tuple[int, ...]

    def accepts_shape(self, instance_shape: tuple[int, ...]) -> bool:
        if len(instance_shape) != len(self.shape):
            return False
        return all(want in (-1, got) for want, got in zip(self.shape, instance_shape, strict=True))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": str(self.datatype), "shape": list(self.shape)}


_INT_KINDS = frozenset("iu")
_NUMBER_KINDS = frozenset("iuf")


def to_tensor(values: list[Any], spec: TensorSpec) -> Array:
    """Decode a JSON batch of instances (a list) into a tensor of `spec`'s datatype.

    Decoding only: whether the tensor fits the model is `validation`'s to say.
    Conversions that would lose information are refused rather than performed:
    floats for an integer input, strings for a number, booleans for a number,
    ragged nesting, integers out of range, numbers too large for a float type.
    """
    if spec.datatype is Datatype.BYTES:
        return _bytes_tensor(values, spec.name)
    try:
        raw = np.asarray(values)
    except (ValueError, OverflowError):
        raise InvalidInput(f"input '{spec.name}' is ragged or not a numeric array") from None
    return cast_checked(raw, spec.datatype, f"input '{spec.name}'")


def cast_checked(raw: Array, datatype: Datatype, what: str) -> Array:
    """`raw` (numbers as JSON or protobuf gave them) as `datatype`, refusing lossy casts.

    The one place every transport converts numbers, so that they all refuse
    the same things: floats for an integer type, booleans for a number,
    numbers for BOOL, integers out of range, finite values too large for a
    float type.
    """
    kind = raw.dtype.kind
    target = datatype.numpy_dtype
    if raw.size == 0:
        return raw.astype(target)
    if datatype is Datatype.BOOL:
        if kind != "b":
            raise InvalidInput(f"{what} expects booleans (BOOL)")
    elif kind == "b" or kind not in _NUMBER_KINDS:
        raise InvalidInput(f"{what} expects numbers of datatype {datatype}")
    elif target.kind in _INT_KINDS:
        if kind not in _INT_KINDS:
            raise InvalidInput(f"{what} expects integers ({datatype})")
        info = np.iinfo(target)
        # Python ints: comparing a uint64 array with a negative bound must not wrap.
        if int(raw.min()) < info.min or int(raw.max()) > info.max:
            raise InvalidInput(f"{what} has values out of range for {datatype}")
    with np.errstate(over="ignore", invalid="ignore"):
        tensor = raw.astype(target, copy=False)
    if target.kind == "f":
        # NaN and infinity a client sent (protobuf, raw bytes) are values, e.g. missing
        # features; a finite number that became infinite is an overflow.
        was_finite = np.isfinite(raw) if kind == "f" else True
        if (~np.isfinite(tensor) & was_finite).any():
            raise InvalidInput(f"{what} has values out of range for {datatype}")
    return tensor


def bytes_batch(items: list[bytes], spec: TensorSpec | None) -> Array:
    """One BYTES element per instance (uploads), shaped for a `()`, `(1,)` or `(-1,)`
    spec (no spec: an input the model does not have, left for the validator to refuse)."""
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    shaped: Array = arr.reshape(len(items), 1) if spec is not None and spec.shape else arr
    return shaped


def _bytes_tensor(values: list[Any], name: str) -> Array:
    converted = [_bytes_leaves(v, name) for v in values]
    shape = _nested_shape(converted, name)
    arr = np.empty(shape, dtype=object)
    for index in np.ndindex(*shape):
        leaf: Any = converted
        for i in index:
            leaf = leaf[i]
        arr[index] = leaf
    return arr


def _bytes_leaves(value: Any, name: str) -> Any:
    if isinstance(value, list):
        return [_bytes_leaves(v, name) for v in value]
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        return decode_base64(value["b64"], f"input '{name}'")
    raise InvalidInput(f'input \'{name}\' expects strings or {{"b64": "..."}} values')


def _nested_shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    shapes = {_nested_shape(v, name) for v in value}
    if len(shapes) > 1:
        raise InvalidInput(f"input '{name}' is ragged")
    return (len(value), *(shapes.pop() if shapes else ()))


def decode_base64(text: str, what: str = "value") -> bytes:
    """Standard or URL-safe base64, padded or not, line-wrapped or not.

    Characters outside the alphabet are refused, never skipped."""
    compact = "".join(text.split())
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{what} is not valid base64") from None


_LONG_LONG = {"q": np.dtype(np.int64), "Q": np.dtype(np.uint64)}


def json_ready(tensor: Array) -> Array:
    """`tensor` as orjson serialises it: C-contiguous (a model may return any
    layout), and 64-bit integers as numpy's `int64`/`uint64` rather than
    `longlong`, the same bits under another type that orjson does not know
    (ONNX Runtime returns INT64 so; a scalar row of one would not serialise)."""
    tensor = np.ascontiguousarray(tensor)
    same_bits = _LONG_LONG.get(tensor.dtype.char)
    return tensor.view(same_bits) if same_bits is not None else tensor


def row_to_json(tensor: Array, row: int) -> Any:
    """One instance of an output as JSON-ready values (numeric rows stay numpy:
    orjson serialises them natively); BYTES become text, or {"b64": ...} if binary."""
    value = tensor[row]
    if tensor.dtype != object:
        return value
    if isinstance(value, np.ndarray):
        return [_bytes_to_json(v) for v in value.reshape(-1)]
    return _bytes_to_json(value)


def _bytes_to_json(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode()}
    return value

"""THE JSON parse of every request body: bounded in bytes, nesting and values.

orjson allocates a Python object per value (about 30 bytes of heap for each
`1,` of body, so a few megabytes of JSON can cost hundreds), nests until its
own recursion limit, and what it returns is walked again by pydantic and numpy,
which fail on deep documents with RecursionError or ndim errors. So before
orjson sees a body, `scan` measures it on the raw bytes: its depth (the deepest
open array or object) and its values (items and members). The scan runs at C
speed: escapes and everything but the structural characters are dropped with
`bytes.replace` and `bytes.translate`, strings with one regular expression over
what is left (or a running count of quotes in numpy, when strings are many),
and the depth is a cumulative sum in numpy over the brackets alone.

The counts are exact for valid JSON; for invalid JSON they are whatever the
bytes say, and orjson then reports the syntax error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelplex.errors import InvalidInput, PayloadTooLarge
from modelplex.settings import Settings

_STRUCTURE = b'"[]{},'
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in _STRUCTURE)
_QUOTE = ord('"')
_STRING = re.compile(rb'"[^"]*"')  # once escapes are gone, a string ends at the next quote
_QUOTES_PER_REGEX = 32  # a regex match costs about as much as 60 bytes of numpy
_STEP = np.zeros(256, dtype=np.int8)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1


@dataclass(frozen=True)
class JsonLimits:
    """What one JSON document may be (the `max_json_*` settings)."""

    max_bytes: int
    max_depth: int
    max_elements: int

    @classmethod
    def of(cls, settings: Settings) -> JsonLimits:
        return cls(settings.max_json_bytes, settings.max_json_depth, settings.max_json_elements)


@dataclass(frozen=True)
class Shape:
    depth: int
    elements: int


def scan(data: bytes) -> Shape:
    """The depth and the number of values of a JSON document, from its bytes."""
    if b'\\"' in data:
        # Only a quote after a backslash can be escaped; pairs go first, so that
        # `\\"` reads as an escaped backslash, then a real quote.
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = data.translate(None, _NOT_STRUCTURE)
    quotes = structure.count(b'"')
    if quotes * _QUOTES_PER_REGEX < len(structure):
        structure = _STRING.sub(b"", structure)  # few strings: one match each is cheapest
    elif quotes:
        # Every quote left opens or closes a string: what lies between an odd
        # quote and the next one is text. (A running count in uint8 wraps, but
        # keeps its parity.)
        chars = np.frombuffer(structure, dtype=np.uint8)
        is_quote = chars == _QUOTE
        outside = (np.cumsum(is_quote, dtype=np.uint8) & 1) == 0
        outside &= ~is_quote
        structure = chars[outside].tobytes()
    brackets = structure.translate(None, b",")
    opened = brackets.count(b"[") + brackets.count(b"{")
    # Each comma separates two values; each container holds one more, and is one.
    elements = len(structure) - len(brackets) + opened + 1
    return Shape(_depth(brackets) if opened > 1 else opened, elements)


def _depth(brackets: bytes) -> int:
    levels = np.cumsum(_STEP[np.frombuffer(brackets, dtype=np.uint8)], dtype=np.int32)
    return int(levels.max())


def check(data: bytes, limits: JsonLimits, what: str = "the body") -> None:
    """Refuse a document over the limits, before anything parses it."""
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(
            f"{what} is {len(data)} bytes of JSON; the limit is {limits.max_bytes}"
        )
    if len(data) <= min(limits.max_depth, limits.max_elements):
        return  # too short to be too deep or too many
    # Bounds from raw counts (brackets and commas inside strings count too): most
    # request bodies are proven within the limits by these alone, at ~1 us of the
    # ~6 us a scan costs.
    opened = data.count(b"[") + data.count(b"{")
    if opened <= limits.max_depth and data.count(b",") + opened < limits.max_elements:
        return
    shape = scan(data)
    if shape.depth > limits.max_depth:
        raise InvalidInput(
            f"{what} is nested deeper than {limits.max_depth} levels of arrays and objects"
        )
    if shape.elements > limits.max_elements:
        raise InvalidInput(
            f"{what} holds about {shape.elements} JSON values; the limit is {limits.max_elements}"
        )


def loads(data: bytes, limits: JsonLimits, what: str = "the body") -> Any:
    """`data` parsed, or PayloadTooLarge / InvalidInput: never a parser's own error."""
    check(data, limits, what)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None

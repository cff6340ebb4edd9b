"""The JSON pre-scan: its depth and value counts agree with the parsed document."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from modelplex.core.jsonlimits import JsonLimits, loads, scan
from modelplex.errors import InvalidInput, PayloadTooLarge

TRICKY_TEXT = ["", "[", "]]", '{"a": [1]}', "\\", '\\"', '"', '\\\\"[', "é ☃ \n\t", ",,,"]


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


def values(value: Any) -> int:
    """The scan's count: commas + containers + 1, i.e. every item and member, one
    for each empty container, and one for the document."""
    return 1 + _members(value)


def _members(value: Any) -> int:
    children = value.values() if isinstance(value, dict) else value
    if not isinstance(value, list | dict):
        return 0
    return (len(value) or 1) + sum(_members(v) for v in children)


def random_document(rng: random.Random, level: int = 0) -> Any:
    kind = rng.random()
    if level > 6 or kind < 0.35:
        return rng.choice([0, -1.5, 1e300, True, None, rng.choice(TRICKY_TEXT)])
    if kind < 0.7:
        return [random_document(rng, level + 1) for _ in range(rng.randint(0, 4))]
    return {
        rng.choice(TRICKY_TEXT) + str(i): random_document(rng, level + 1)
        for i in range(rng.randint(0, 4))
    }


def test_scan_agrees_with_the_parse_on_random_documents() -> None:
    rng = random.Random(8)
    for _ in range(500):
        document = random_document(rng)
        shape = scan(orjson.dumps(document))
        assert shape.depth == depth(document), document
        assert shape.elements == values(document), document


def test_whitespace_and_escapes_do_not_change_the_count() -> None:
    text = b'  {\n "a\\"[" : [ 1 , "\\\\" , {"b": "]]]"} ] ,\t"c": "\\u005b" }  '
    assert scan(text).depth == 3
    assert scan(text).elements == values(orjson.loads(text)) == 7


LIMITS = JsonLimits(max_bytes=10_000, max_depth=8, max_elements=100)


@pytest.mark.parametrize(
    ("data", "error", "fragment"),
    [
        (b"[" * 9 + b"]" * 9, InvalidInput, "nested deeper than 8"),
        (b"[" * 100_000, PayloadTooLarge, "limit is 10000"),
        (b"[" * 5000, InvalidInput, "nested deeper"),  # invalid and deep: deep is said first
        (b"[" + b"0," * 200 + b"0]", InvalidInput, "JSON values"),
        (b'{"a": [1, 2}', InvalidInput, "not valid JSON"),
    ],
)
def test_limits_are_invalid_input_or_too_large(
    data: bytes, error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=fragment):
        loads(data, LIMITS)


def test_within_the_limits_the_document_is_parsed() -> None:
    data = orjson.dumps({"x": [[["a[[[[[[[[[[" for _ in range(10)]]]})
    assert loads(data, LIMITS) == orjson.loads(data)
    assert loads(b"[" * 8 + b"]" * 8, LIMITS) is not None

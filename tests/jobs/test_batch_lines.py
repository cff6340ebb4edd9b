"""Reading a batch file in blocks: the same lines, numbers and refusals as reading it
whole, however the bytes arrive."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from modelplex.core.jsonlimits import JsonLimits
from modelplex.errors import InvalidInput
from modelplex.jobs.batch_lines import LineParser, line_blocks

LIMITS = JsonLimits(max_bytes=64, max_depth=8, max_elements=100)


async def _pieces(data: bytes, seed: int) -> AsyncIterator[bytes]:
    rng = random.Random(seed)
    at = 0
    while at < len(data):
        step = rng.randint(1, 40)
        yield data[at : at + step]
        at += step


def _read(data: bytes, seed: int, chunk_size: int = 2) -> tuple[list[list[str]], list[int]]:
    """Chunks of custom_ids, and the numbers of refused lines."""
    parser = LineParser(1000, LIMITS, chunk_size)

    async def run() -> tuple[list[str], list[int]]:
        ids: list[str] = []
        refused: list[int] = []
        async for block in line_blocks(_pieces(data, seed), LIMITS.max_bytes, block_bytes=50):
            if isinstance(block, int):
                refused.append(parser.too_long(block)["line"])
                continue
            valid, bad = parser.feed(block)
            assert len(valid) % chunk_size == 0
            ids += [v["custom_id"] for v in valid]
            refused += [r["line"] for r in bad]
        ids += [v["custom_id"] for v in parser.finish()]
        return ids, refused

    ids, refused = asyncio.run(run())
    return [ids[i : i + chunk_size] for i in range(0, len(ids), chunk_size)], refused


FILE = (
    b'{"custom_id":"a","input":1}\r\n'
    b"\n"
    b"not json\n"
    b'{"custom_id":"b","input":[1,2]}\r'
    b'{"custom_id":"' + b"x" * 200 + b'","input":1}\n'  # too long to hold
    b'{"custom_id":"a","input":2}\n'  # a repeated id
    b'{"custom_id":"c","input":3}\n'
    b'{"custom_id":"d","input":4}'  # no newline at the end
)


@pytest.mark.parametrize("seed", range(20))
def test_blocks_read_as_the_whole_file_would(seed: int) -> None:
    chunks, refused = _read(FILE, seed)
    assert chunks == [["a", "b"], ["c", "d"]]
    assert refused == [3, 5, 6]


def test_too_many_lines_and_no_lines() -> None:
    parser = LineParser(2, LIMITS, 10)
    with pytest.raises(InvalidInput, match="more than 2 lines"):
        parser.feed(b"\n\n\n")
    with pytest.raises(InvalidInput, match="no lines"):
        LineParser(5, LIMITS, 10).finish()


def _whole(data: bytes) -> tuple[list[list[str]], list[int]]:
    """What reading the file whole gives: splitlines, each line held to the limits."""
    parser = LineParser(1000, LIMITS, 2)
    valid, bad = parser.feed(data)
    ids = [v["custom_id"] for v in valid + parser.finish()]
    refused = [r["line"] for r in bad]
    return [ids[i : i + 2] for i in range(0, len(ids), 2)], refused


@pytest.mark.parametrize("seed", range(200))
def test_random_files_read_in_blocks_as_whole(seed: int) -> None:
    rng = random.Random(seed)
    lines = [
        b'{"custom_id":"%d","input":"%s"}' % (i, b"x" * rng.choice([0, 5, 30, 60, 90, 300]))
        for i in range(rng.randint(1, 12))
    ]
    data = b"".join(line + rng.choice([b"\n", b"\r", b"\r\n", b"\n\n"]) for line in lines)
    if rng.random() < 0.5:
        data = data.rstrip(b"\r\n")
    assert _read(data, seed) == _whole(data)

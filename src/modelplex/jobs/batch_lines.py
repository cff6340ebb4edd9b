"""Reading a batch file as it arrives: whole lines in bounded blocks, each block
parsed on its own (off the event loop, by the caller), valid lines handed on a
chunk at a time. Memory is a block, a line of at most `max_json_bytes`, the
lines of an unfinished chunk and the set of `custom_id`s seen so far (needed to
refuse a repeated one anywhere in the file), whatever the file's size. The set
holds a 16-byte digest of each id, about 100 bytes a line however long the ids
are (under 100 MiB at `max_batch_lines` = 1,000,000).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from modelplex.core import jsonlimits
from modelplex.core.jsonlimits import JsonLimits
from modelplex.errors import InvalidInput, PayloadTooLarge
from modelplex.records import JobError

MAX_CUSTOM_ID = 256
BLOCK_BYTES = 1024 * 1024
"""Whole lines parsed in one go: big enough to make the hand-off to a thread cheap,
small enough that the loop is never held long (orjson keeps the GIL)."""
_CR, _LF = ord("\r"), ord("\n")


async def line_blocks(
    stream: AsyncIterator[bytes], max_line_bytes: int, block_bytes: int = BLOCK_BYTES
) -> AsyncIterator[bytes | int]:
    """The file as blocks of whole lines (the last one may lack its end), in order,
    lines ending as `bytes.splitlines` ends them (\n, \r or \r\n); a line longer
    than `max_line_bytes` is not held: it comes as its size."""
    buffer = bytearray()
    skipped: int | None = None  # bytes so far of a line too long to hold
    after_cr = False  # the skipped line ended in \r: a \n next belongs to it
    async for data in stream:
        start = 0
        if after_cr and data:
            start, after_cr = (1 if data[0] == _LF else 0), False
        if skipped is not None:
            end = _first_end(data, start)
            if end < 0:
                skipped += len(data) - start
                continue
            yield skipped + end - start
            skipped, start = None, end + 1
            if data[end] == _CR:
                if end + 1 == len(data):
                    after_cr = True
                elif data[end + 1] == _LF:
                    start += 1
        buffer += memoryview(data)[start:]
        # A \r last may be the first half of \r\n: the line ends in the next read.
        end = len(buffer) - 1 if buffer.endswith(b"\r") else len(buffer)
        cut = max(buffer.rfind(b"\n", 0, end), buffer.rfind(b"\r", 0, end)) + 1
        if len(buffer) - cut > max_line_bytes + 1:  # + 1: the \r of a \r\n
            if cut:
                yield bytes(buffer[:cut])
            if buffer.endswith(b"\r"):  # the line ends here, perhaps with a \n next
                yield len(buffer) - cut - 1
                after_cr = True
            else:
                skipped = len(buffer) - cut
            buffer.clear()
        elif cut >= block_bytes:
            yield bytes(buffer[:cut])
            del buffer[:cut]
    if skipped is not None:
        yield skipped
    elif buffer:
        yield bytes(buffer)


def _first_end(data: bytes, start: int) -> int:
    ends = [i for i in (data.find(b"\n", start), data.find(b"\r", start)) if i >= 0]
    return min(ends, default=-1)


class LineParser:
    """Parses blocks of lines in order (one block at a time: it keeps state)."""

    def __init__(
        self,
        max_lines: int,
        limits: JsonLimits,
        chunk_size: int,
        check_input: Callable[[Any], None] | None = None,
    ) -> None:
        """`check_input`: raises InvalidInput for a line's input the target refuses
        (a pipeline's input schema), so that the line is refused at submission."""
        self.max_lines = max_lines
        self.limits = limits
        self.chunk_size = chunk_size
        self._check_input = check_input
        self.lines = 0
        """Lines read so far, blank ones included (line numbers count them)."""
        self.valid = 0
        self.refused = 0
        self._seen: set[bytes] = set()
        self._pending: list[dict[str, Any]] = []

    def feed(self, block: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The valid items that fill whole chunks (a multiple of `chunk_size`, the
        rest kept for the next block), and the lines refused, with their error.
        Each line is held to the JSON limits, as a JSON body would be."""
        refused: list[dict[str, Any]] = []
        for raw in block.splitlines():
            number = self._next_line()
            if not raw.strip():
                continue
            try:
                line = jsonlimits.loads(raw, self.limits, "the line")
            except (InvalidInput, PayloadTooLarge) as exc:
                refused.append(_refused(number, None, str(exc)))
                continue
            item = self._item(number, line, refused)
            if item is not None:
                self._pending.append(item)
        self.refused += len(refused)
        return self._take(whole=True), refused

    def too_long(self, size: int) -> dict[str, Any]:
        """The refusal of a line of `size` bytes, over the limit, that was not read."""
        self.refused += 1
        message = f"the line is {size} bytes of JSON; the limit is {self.limits.max_bytes}"
        return _refused(self._next_line(), None, str(PayloadTooLarge(message)))

    def finish(self) -> list[dict[str, Any]]:
        """The valid items left over (the last, shorter chunk)."""
        if not self.valid and not self.refused:
            raise InvalidInput("the batch file has no lines")
        return self._take(whole=False)

    def _next_line(self) -> int:
        self.lines += 1
        if self.lines > self.max_lines:
            raise InvalidInput(f"the batch file has more than {self.max_lines} lines")
        return self.lines

    def _item(self, number: int, line: Any, refused: list[dict[str, Any]]) -> dict[str, Any] | None:
        custom_id = line.get("custom_id") if isinstance(line, dict) else None
        if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
            refused.append(_refused(number, None, "each line needs a string custom_id"))
            return None
        key = hashlib.blake2b(custom_id.encode(), digest_size=16).digest()
        if key in self._seen:
            refused.append(_refused(number, custom_id, "custom_id is not unique in the file"))
            return None
        self._seen.add(key)
        if "input" not in line or set(line) - {"custom_id", "input"}:
            refused.append(_refused(number, custom_id, "a line holds custom_id and input only"))
            return None
        if self._check_input is not None:
            try:
                self._check_input(line["input"])
            except InvalidInput as exc:
                refused.append(_refused(number, custom_id, exc.message))
                return None
        self.valid += 1
        return {"custom_id": custom_id, "input": line["input"]}

    def _take(self, *, whole: bool) -> list[dict[str, Any]]:
        end = len(self._pending) - len(self._pending) % self.chunk_size if whole else None
        taken = self._pending[:end]
        del self._pending[:end]
        return taken


def _refused(line: int, custom_id: str | None, message: str) -> dict[str, Any]:
    error = JobError.of(InvalidInput(message)).as_dict()
    error.pop("step")
    return {"custom_id": custom_id, "line": line, "error": error}

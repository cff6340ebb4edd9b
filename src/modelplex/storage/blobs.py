"""Blob storage for job inputs and results too large for a database row.

The row keeps a reference (`local:<key>`); the interface is small enough for an
S3-compatible implementation beside the local one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterable, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, TypeVar

from modelplex.errors import BlobNotFound, StoreUnavailable
from modelplex.ids import new_id

if TYPE_CHECKING:
    from modelplex.executors import Pool

T = TypeVar("T")

_KEY = re.compile(r"blob_[0-9a-z]{26}")


class BlobStore(Protocol):
    async def put(self, data: bytes) -> str:
        """Store `data`; return its reference."""
        ...

    async def put_stream(self, chunks: AsyncIterable[bytes]) -> str:
        """Store the concatenated `chunks` (a large upload, never whole in memory);
        return its reference. Nothing is stored if `chunks` raises."""
        ...

    async def get(self, ref: str) -> bytes: ...

    def open_file(self, ref: str) -> BinaryIO:
        """The blob as a seekable file, to read in pieces from a worker thread
        (a remote store would download it to a temporary file first)."""
        ...

    async def delete(self, ref: str) -> None: ...


class LocalBlobStore:
    """Files under one directory (shared storage if workers run on other hosts)."""

    PREFIX = "local:"

    def __init__(self, root: Path, pool: Pool | None = None) -> None:
        """`pool`: the threads its file IO runs on (the process's `Executors.blobs`)."""
        self.root = root
        self._pool = pool

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        if self._pool is None:
            return await asyncio.to_thread(fn, *args)
        return await self._pool.run(fn, *args)

    def _path(self, ref: str) -> Path:
        key = ref[len(self.PREFIX) :] if ref.startswith(self.PREFIX) else ""
        if not _KEY.fullmatch(key):  # only keys this store made: no path tricks
            raise BlobNotFound("invalid blob reference")
        return self.root / key[-2:] / key

    async def put(self, data: bytes) -> str:
        ref = self.PREFIX + new_id("blob")
        try:
            await self._io(self._write, self._path(ref), data)
        except OSError as exc:  # disk full, permissions: an outage, not the caller's fault
            raise StoreUnavailable(f"blob store: {type(exc).__name__}") from exc
        return ref

    async def put_stream(self, chunks: AsyncIterable[bytes]) -> str:
        ref = self.PREFIX + new_id("blob")
        path = self._path(ref)
        partial = path.with_suffix(".partial")
        file = await _writing(self._io(_create, partial))
        try:
            try:
                async for chunk in chunks:  # the source's own errors pass through as they are
                    await _writing(self._io(file.write, chunk))
            finally:
                await _writing(self._io(file.close))
            await _writing(self._io(os.replace, partial, path))
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)  # one quick call, even when cancelled
            raise
        return ref

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        os.replace(partial, path)  # readers never see half a blob

    async def get(self, ref: str) -> bytes:
        path = self._path(ref)
        try:
            return await self._io(path.read_bytes)
        except FileNotFoundError:
            raise BlobNotFound(f"blob {ref} not found") from None
        except OSError as exc:
            raise StoreUnavailable(f"blob store: {type(exc).__name__}") from exc

    def open_file(self, ref: str) -> BinaryIO:
        try:
            return self._path(ref).open("rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {ref} not found") from None
        except OSError as exc:
            raise StoreUnavailable(f"blob store: {type(exc).__name__}") from exc

    async def delete(self, ref: str) -> None:
        with contextlib.suppress(FileNotFoundError, BlobNotFound):
            await self._io(self._path(ref).unlink)


async def _writing(operation: Awaitable[T]) -> T:
    """A write to the store; its OSError (disk full, permissions) is an outage."""
    try:
        return await operation
    except OSError as exc:
        raise StoreUnavailable(f"blob store: {type(exc).__name__}") from exc


def _create(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")

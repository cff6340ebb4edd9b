"""Blob storage for job inputs and results too large for a database row.

The row keeps a reference (`local:<key>`); the interface is small enough for an
S3-compatible implementation beside the local one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

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

    async def get(self, ref: str) -> bytes: ...

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

    async def delete(self, ref: str) -> None:
        with contextlib.suppress(FileNotFoundError, BlobNotFound):
            await self._io(self._path(ref).unlink)

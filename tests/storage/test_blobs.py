"""The local blob store: only its own references, and storage failures as outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelplex.errors import BlobNotFound, StoreUnavailable
from modelplex.storage.blobs import LocalBlobStore


def test_blob_references_are_only_the_stores_own(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")

    async def main() -> None:
        ref = await store.put(b"data")
        assert await store.get(ref) == b"data"
        for bad in ("local:../../etc/passwd", "local:blob_..", "s3:blob_x", "local:"):
            with pytest.raises(BlobNotFound):
                await store.get(bad)
        await store.delete("local:../x")  # refused quietly, deletes nothing

    asyncio.run(main())


def test_a_store_that_cannot_write_is_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    root.write_text("a file where the directory should be")
    store = LocalBlobStore(root)
    with pytest.raises(StoreUnavailable) as caught:
        asyncio.run(store.put(b"data"))
    assert str(root) not in caught.value.message  # no path reaches a client


def test_a_stream_is_stored_whole_or_not_at_all(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    parts = [bytes([i]) * 100_000 for i in range(20)]

    async def chunks(fail_after: int | None = None) -> AsyncIterator[bytes]:
        for i, part in enumerate(parts):
            if i == fail_after:
                raise ConnectionError("the client went away")
            yield part

    async def main() -> None:
        ref = await store.put_stream(chunks())
        assert await store.get(ref) == b"".join(parts)
        with pytest.raises(ConnectionError):
            await store.put_stream(chunks(fail_after=5))

    asyncio.run(main())
    stored = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert len(stored) == 1  # the failed stream left no partial file behind
    assert stored[0].suffix == ""


def test_a_stream_that_cannot_be_written_is_unavailable(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    root.write_text("a file where the directory should be")

    async def chunks() -> AsyncIterator[bytes]:
        yield b"data"

    with pytest.raises(StoreUnavailable) as caught:
        asyncio.run(LocalBlobStore(root).put_stream(chunks()))
    assert str(root) not in caught.value.message

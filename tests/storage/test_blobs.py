"""The local blob store: only its own references, and storage failures as outages."""

from __future__ import annotations

import asyncio
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

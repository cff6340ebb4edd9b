"""The bounded zip reader on archives that lie: about an entry's size, or about
how many entries there are. (Hostile archives end to end: test_album_hostile.py.)"""

from __future__ import annotations

import io
import struct
import zipfile

import pytest

from modelplex.errors import InvalidInput
from modelplex.jobs.archives import ArchiveLimits, open_archive

LIMITS = ArchiveLimits(max_entries=10, max_entry_bytes=1024**2, max_total_bytes=4 * 1024**2)


def _zip(entries: dict[str, bytes]) -> bytearray:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, data in entries.items():
            zipped.writestr(name, data)
    return bytearray(archive.getvalue())


def _read_all(data: bytes) -> list[bytes]:
    with open_archive(io.BytesIO(data), LIMITS, "a.zip") as archive:
        return [archive.read(entry) for entry in archive.files()]


def test_an_entry_that_claims_to_be_small_is_refused_not_inflated() -> None:
    data = _zip({"big.png": bytes(50 * 1024**2)})
    for signature, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature)
        struct.pack_into("<L", data, at + size_at, 1000)  # uncompressed size: 1000 bytes
    with pytest.raises(InvalidInput, match=r"corrupt at 'big\.png'"):
        _read_all(bytes(data))


def test_an_end_record_that_understates_the_entries_is_caught_by_the_directory_size() -> None:
    data = _zip({f"f{i}": b"" for i in range(5000)})
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<HH", data, end + 8, 1, 1)  # "one entry"
    with pytest.raises(InvalidInput, match="central directory too large"):
        _read_all(bytes(data))


def test_a_good_archive_reads_entry_by_entry() -> None:
    data = _zip({"b.png": b"2" * 3000, "a.png": b"1" * 10, "dir/": b""})
    assert _read_all(bytes(data)) == [b"1" * 10, b"2" * 3000]


def test_the_declared_total_is_checked_before_reading() -> None:
    entries = {f"{i}.png": bytes(range(256)) * 4000 for i in range(5)}  # 1 MB each, 5 in all
    with pytest.raises(InvalidInput, match="expands to more than"):
        _read_all(bytes(_zip(entries)))

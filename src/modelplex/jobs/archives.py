"""Reading an uploaded zip archive with bounded work, for pipeline steps.

The archive is read from its file, never whole into memory. Before the
standard library parses the central directory (which it does whole, into one
object per entry), the end record's entry count and directory size are checked
against the limits, so an archive of a million empty entries costs nothing.
Every entry counts against `max_entries` (directories, hidden files and
`__MACOSX` included), whether or not the caller reads it. Entries are read one
at a time in bounded pieces, and the bytes are counted as they are
decompressed, so an entry that lies about its size cannot get past the caps.

Anything wrong with the archive itself (not a zip, truncated, corrupt,
encrypted, an unsupported compression method, too many entries, a zip bomb) is
`InvalidInput`: running the job again cannot help, so it fails once.
"""

from __future__ import annotations

import errno
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

from modelplex.errors import InvalidInput

_PIECE = 1024 * 1024
_END = struct.Struct("<4s4H2LH")  # end of central directory record
_END_SIGNATURE = b"PK\x05\x06"
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_END64 = struct.Struct("<4sQ2H2L4Q")
_END64_SIGNATURE = b"PK\x06\x06"
_MAX_COMMENT = 0xFFFF
_SMALL_ENTRY = 1024 * 1024  # below this, no compression ratio is worth refusing
# What a corrupt archive makes the standard library raise (besides BadZipFile).
_MALFORMED = (
    zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError,
    RuntimeError, ValueError, struct.error, UnicodeDecodeError,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_entries: int
    """Every entry counts: files, directories, hidden files."""
    max_entry_bytes: int
    """Largest decompressed entry."""
    max_total_bytes: int
    """Decompressed bytes of all the entries read, together."""
    max_ratio: float = 100.0
    """Largest decompressed/compressed ratio of an entry over 1 MiB (a zip bomb's is
    in the thousands; photos, already compressed, shrink little in a zip)."""
    max_directory_bytes_per_entry: int = 1024
    """Bound on the central directory's size, per allowed entry (names and extras)."""


class Archive:
    """An open zip archive: its entries, and a bounded reader of each."""

    def __init__(self, zipped: zipfile.ZipFile, limits: ArchiveLimits, name: str) -> None:
        self._zipped = zipped
        self._limits = limits
        self._name = name
        self._read_total = 0
        self.entries = zipped.infolist()
        if len(self.entries) > limits.max_entries:
            raise InvalidInput(f"'{name}' holds more than {limits.max_entries} entries")
        declared = 0
        for entry in self.entries:
            if entry.flag_bits & 0x1:
                raise InvalidInput(f"'{name}' is encrypted ('{entry.filename}'): not supported")
            self._check_size(entry, entry.file_size)
            declared += entry.file_size
        if declared > limits.max_total_bytes:
            raise InvalidInput(self._too_large())

    def files(self) -> list[zipfile.ZipInfo]:
        """The entries that are files, sorted by name (directories left out)."""
        return sorted((e for e in self.entries if not e.is_dir()), key=lambda e: e.filename)

    def read(self, entry: zipfile.ZipInfo) -> bytes:
        """One entry's bytes, decompressed in bounded pieces and counted as they come."""
        pieces: list[bytes] = []
        size = 0
        try:
            with self._zipped.open(entry) as stream:
                while piece := stream.read(_PIECE):
                    size += len(piece)
                    self._read_total += len(piece)
                    self._check_size(entry, size)
                    if self._read_total > self._limits.max_total_bytes:
                        raise InvalidInput(self._too_large())
                    pieces.append(piece)
        except (*_MALFORMED, OSError) as exc:
            if not _malformed(exc):
                raise  # the blob store's disk, not the archive: an outage
            raise InvalidInput(f"'{self._name}' is corrupt at '{entry.filename}'") from exc
        return b"".join(pieces)

    def _check_size(self, entry: zipfile.ZipInfo, size: int) -> None:
        limits = self._limits
        if size > limits.max_entry_bytes:
            raise InvalidInput(
                f"'{entry.filename}' in '{self._name}' expands to more than "
                f"{limits.max_entry_bytes} bytes"
            )
        if size > _SMALL_ENTRY and size > limits.max_ratio * max(1, entry.compress_size):
            raise InvalidInput(
                f"'{entry.filename}' in '{self._name}' expands more than "
                f"{limits.max_ratio:g} times: refused as a zip bomb"
            )

    def _too_large(self) -> str:
        return f"'{self._name}' expands to more than {self._limits.max_total_bytes} bytes"


@contextmanager
def open_archive(file: BinaryIO, limits: ArchiveLimits, name: str) -> Iterator[Archive]:
    """The zip archive in `file` (seekable), checked against `limits` before it is parsed."""
    _check_directory(file, limits, name)
    try:
        zipped = zipfile.ZipFile(file)
    except (*_MALFORMED, OSError) as exc:
        if not _malformed(exc):
            raise
        raise InvalidInput(f"'{name}' is not a readable zip archive") from exc
    with zipped:
        yield Archive(zipped, limits, name)


def _malformed(exc: BaseException) -> bool:
    """A corrupt offset makes the standard library seek before the file's start,
    which a real file answers with EINVAL; other OS errors are the disk's."""
    return not isinstance(exc, OSError) or exc.errno == errno.EINVAL


def _check_directory(file: BinaryIO, limits: ArchiveLimits, name: str) -> None:
    """Refuse an archive whose end record announces more entries, or a bigger
    central directory, than the limits allow (zip64 records included)."""
    size = file.seek(0, 2)
    tail_start = max(0, size - _END.size - _MAX_COMMENT)
    file.seek(tail_start)
    tail = file.read()
    at = tail.rfind(_END_SIGNATURE)
    if at < 0 or len(tail) - at < _END.size:
        raise InvalidInput(f"'{name}' is not a readable zip archive (no end record)")
    fields = _END.unpack_from(tail, at)
    entries, directory_bytes = fields[4], fields[5]
    if entries == 0xFFFF or directory_bytes == 0xFFFFFFFF:
        entries, directory_bytes = _zip64_directory(file, tail_start + at, name)
    if entries > limits.max_entries:
        raise InvalidInput(f"'{name}' holds more than {limits.max_entries} entries")
    if directory_bytes > limits.max_entries * limits.max_directory_bytes_per_entry:
        raise InvalidInput(f"'{name}' has a central directory too large for its entries")
    file.seek(0)


def _zip64_directory(file: BinaryIO, end_at: int, name: str) -> tuple[int, int]:
    if end_at < _END64_LOCATOR.size:
        raise InvalidInput(f"'{name}' is not a readable zip archive (bad zip64 record)")
    file.seek(end_at - _END64_LOCATOR.size)
    locator = file.read(_END64_LOCATOR.size)
    signature, _, record_at, _ = _END64_LOCATOR.unpack(locator)
    if signature != _END64_LOCATOR_SIGNATURE:
        raise InvalidInput(f"'{name}' is not a readable zip archive (bad zip64 record)")
    file.seek(record_at)
    record = file.read(_END64.size)
    if len(record) < _END64.size or record[:4] != _END64_SIGNATURE:
        raise InvalidInput(f"'{name}' is not a readable zip archive (bad zip64 record)")
    fields = _END64.unpack(record)
    return int(fields[7]), int(fields[8])

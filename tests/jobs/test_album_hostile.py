"""Hostile zip archives sent to album-tagging over a real socket, to a real worker
process, on SQLite and PostgreSQL: each fails once with INVALID_INPUT (never
retried), and the server and worker keep serving afterwards."""

from __future__ import annotations

import io
import os
import struct
import zipfile
from collections.abc import Callable

import pytest

from tests.jobs.conftest import JobsEnv
from tests.jobs.harness import wait_job


def _zip(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", method) as zipped:
        for name, data in entries.items():
            zipped.writestr(name, data)
    return archive.getvalue()


def too_many_entries(photo: bytes) -> bytes:
    """One photo; the rest hidden files, `__MACOSX` twins and directories, which count too."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("album/cat.jpg", photo)
        for i in range(400):
            zipped.writestr(f"__MACOSX/album/._{i}.jpg", b"")
            zipped.writestr(f"album/.hidden-{i}", b"")
            zipped.mkdir(f"album/folder-{i}")
    return archive.getvalue()


def zip_bomb(photo: bytes) -> bytes:
    """20 MiB of zeros in a 20 KB entry: a compression ratio of about a thousand."""
    return _zip({"album/cat.jpg": photo, "album/bomb.png": bytes(20 * 1024 * 1024)})


def corrupt(photo: bytes) -> bytes:
    data = bytearray(_zip({"album/cat.jpg": photo}))
    start = 30 + len("album/cat.jpg")  # the first entry's compressed bytes
    for i in range(start + 100, start + 400):
        data[i] ^= 0x5A
    return bytes(data)


def truncated(photo: bytes) -> bytes:
    data = _zip({"album/cat.jpg": photo, "album/again.jpg": photo})
    return data[: len(data) // 2]


def encrypted(photo: bytes) -> bytes:
    """The encryption flag set in the entry's local and central headers (as `zip -e` does)."""
    data = bytearray(_zip({"album/cat.jpg": photo}, zipfile.ZIP_STORED))
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature)
        (flags,) = struct.unpack_from("<H", data, at + flag_at)
        struct.pack_into("<H", data, at + flag_at, flags | 0x1)
    return bytes(data)


def not_a_zip(photo: bytes) -> bytes:
    return os.urandom(4096)


def a_photo_called_zip(photo: bytes) -> bytes:
    return photo


HOSTILE: dict[str, Callable[[bytes], bytes]] = {
    "too-many-entries": too_many_entries,
    "zip-bomb": zip_bomb,
    "corrupt": corrupt,
    "truncated": truncated,
    "encrypted": encrypted,
    "not-a-zip": not_a_zip,
    "a-photo": a_photo_called_zip,
}

EXPECTED_WORDS = {
    "too-many-entries": "entries",
    "zip-bomb": "zip bomb",
    "corrupt": "corrupt",
    "truncated": "not a readable zip",
    "encrypted": "encrypted",
    "not-a-zip": "not a readable zip",
    "a-photo": "not a readable zip",
}


def _upload(env: JobsEnv, archive: bytes) -> str:
    response = env.client.post(
        "/v1/jobs",
        data={"pipeline": "album-tagging"},
        files={"file": ("album.zip", archive, "application/zip")},
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_archive_fails_once_with_invalid_input(
    jobs_env: JobsEnv, photos: dict[str, bytes], kind: str
) -> None:
    done = wait_job(jobs_env.client, _upload(jobs_env, HOSTILE[kind](photos["cat.jpg"])))
    assert done["status"] == "FAILED", done
    assert done["error"]["code"] == "INVALID_INPUT"
    assert done["error"]["step"] == "decode"
    assert EXPECTED_WORDS[kind] in done["error"]["message"]
    assert done["attempts"] == 1  # the pipeline allows 2: this failure is final
    assert len(done["history"]) == 1
    assert jobs_env.client.get("/healthz").status_code == 200


def test_a_good_archive_still_completes_after_hostile_ones(
    jobs_env: JobsEnv, photos: dict[str, bytes]
) -> None:
    hostile = [_upload(jobs_env, make(photos["cat.jpg"])) for make in HOSTILE.values()]
    entries = {f"album/{name}": data for name, data in photos.items()}
    entries |= {f"__MACOSX/album/._{name}": b"\x00\x05\x16\x07" for name in photos}
    entries["album/.DS_Store"] = b"\x00\x00\x00\x01Bud1"
    good = _upload(jobs_env, _zip(entries))
    assert all(wait_job(jobs_env.client, j)["status"] == "FAILED" for j in hostile)
    done = wait_job(jobs_env.client, good)
    assert done["status"] == "COMPLETED", done.get("error")
    result = jobs_env.client.get(f"/v1/jobs/{good}/result").json()
    assert [i["name"] for i in result["images"]] == sorted(entries)[-3:]
    assert result["summary"]["images"] == 3

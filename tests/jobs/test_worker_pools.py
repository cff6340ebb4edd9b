"""A worker running many jobs at once never deadlocks on its own threads.

Album jobs read their zip upload from a sync step (`ctx.read_upload()` waits
for a blob read on the event loop). When sync steps and blob reads shared one
small pool, 64 jobs at a time filled it with steps waiting for reads that
could never get a thread, and the jobs stayed PROCESSING for good (their
leases kept alive by heartbeats). Over a real server, a `modelplex worker`
process and both databases.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import fresh_database
from tests.jobs.conftest import JobsEnv, job_settings, serving_with_a_worker
from tests.jobs.harness import wait_job

ALBUMS = 20


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def busy_env(
    request: pytest.FixtureRequest, jobs_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JobsEnv]:
    """A server and one worker process that runs 64 jobs at a time."""
    tmp = tmp_path_factory.mktemp(f"busy-{request.param}")
    url = fresh_database(request, request.param, tmp)
    # Leases long enough that a busy 2-core machine's late heartbeat loses none.
    settings = job_settings(tmp, url, worker_concurrency=64, job_lease_s=15.0)
    with serving_with_a_worker(settings, jobs_repo, url, timeout_s=60) as env:
        yield env


def album(photos: dict[str, bytes], n: int) -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        for name, content in sorted(photos.items()):
            zipped.writestr(f"album-{n}/{name}", content)
    return archive.getvalue()


def test_twenty_album_uploads_complete_at_concurrency_64(
    busy_env: JobsEnv, photos: dict[str, bytes]
) -> None:
    client = busy_env.client
    ids = []
    for n in range(ALBUMS):
        response = client.post(
            "/v1/jobs",
            data={"pipeline": "album-tagging"},
            files={"file": (f"album-{n}.zip", album(photos, n), "application/zip")},
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    for n, job_id in enumerate(ids):
        done = wait_job(client, job_id)
        assert done["status"] == "COMPLETED", done.get("error")
        assert done["attempts"] == 1
        result = client.get(f"/v1/jobs/{job_id}/result").json()
        top = {i["name"]: i["labels"][0]["class_id"] for i in result["images"]}
        assert top[f"album-{n}/coffee.png"] == 967
        assert result["summary"]["images"] == len(photos)
    # The server keeps serving: an ordinary request after the burst.
    assert client.get("/v1/models/digits").status_code == 200

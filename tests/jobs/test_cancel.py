"""Cancelling jobs and batches over a real server and `modelplex worker` process.

The worker renews its leases every 40 s here (a 120 s lease), so a cancel that
only the heartbeat read would come far too late for these tests: what stops a
job is the worker's short poll of its jobs' cancel requests. Steps and models
wait on files (the worker is another process), never on sleeps: a test opens a
gate once what it wants to observe has happened.
"""

from __future__ import annotations

import io
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import skimage.data
from PIL import Image

from tests.databases import fresh_database
from tests.helpers import copy_model, write_model
from tests.jobs.conftest import JobsEnv, job_settings, serving_with_a_worker
from tests.jobs.harness import wait_for, wait_job

STOP_WITHIN_S = 20.0
"""How long a cancelled job may take to end here: far under the 40 s heartbeat,
far over the second the poll needs (a bound on the wait, not a speed assertion)."""

GATE_STEPS = '''
import time
from pathlib import Path


def _gate(data, check):
    Path(data["entered"]).touch()
    release = Path(data["release"])
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        if check is not None:
            check()
        time.sleep(0.01)


def checking(ctx, data):
    """Waits for its gate, checking for a cancel between waits."""
    _gate(data, ctx.check_cancelled)
    return data


def deaf(ctx, data):
    """Waits for its gate and never looks at the cancel."""
    _gate(data, None)
    return data


def finish(ctx, data):
    return {"done": True}
'''

GATED_PIPELINES = {
    "gated": ("checking",),
    "deaf": ("deaf",),
}

GATED_MODEL_TOML = """\
    runtime = "python"
    timeout_ms = 120000

    [[inputs]]
    name = "x"
    datatype = "FP32"
    shape = [2]

    [[outputs]]
    name = "y"
    datatype = "FP32"
    shape = [2]

    [batching]
    max_batch_size = 4
    max_batch_delay_ms = 1

    [python]
    options = {{ gate = "{gate}" }}
"""

GATED_MODEL = """\
    import time
    from pathlib import Path


    class Model:
        \"\"\"Doubles x once the file `<gate>.open` exists (it marks `<gate>.entered` first).\"\"\"

        def __init__(self, gate):
            self.gate = Path(gate)

        def predict(self, batch):
            (self.gate.parent / (self.gate.name + ".entered")).touch()
            opened = self.gate.parent / (self.gate.name + ".open")
            deadline = time.monotonic() + 60
            while not opened.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            return {"y": batch["x"] * 2}
"""


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gates")


@pytest.fixture(scope="module")
def cancel_repo(example_repo: Path, gates: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("cancel-repo")
    for model in ("digits", "efficientnet-lite0", "album-tagging"):
        copy_model(example_repo, model, repo)
    write_model(repo, "gated-model", GATED_MODEL_TOML.format(gate=gates / "model"), GATED_MODEL)
    for name, (function,) in GATED_PIPELINES.items():
        folder = repo / name
        folder.mkdir()
        toml = f"""
            [[steps]]
            name = "wait"
            function = "{function}"
            [[steps]]
            name = "finish"
            function = "finish"
        """
        (folder / "pipeline.toml").write_text(textwrap.dedent(toml))
        (folder / "steps.py").write_text(GATE_STEPS)
    return repo


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cancel_env(
    request: pytest.FixtureRequest, cancel_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JobsEnv]:
    tmp = tmp_path_factory.mktemp(f"cancel-{request.param}")
    url = fresh_database(request, request.param, tmp)
    settings = job_settings(tmp, url, job_lease_s=120.0, batch_chunk_size=50)
    with serving_with_a_worker(settings, cancel_repo, url) as env:
        yield env


def _gate_input(gates: Path, name: str) -> dict[str, str]:
    return {"entered": str(gates / f"{name}.entered"), "release": str(gates / f"{name}.release")}


def _submit(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_a_running_job_stops_at_its_next_check(cancel_env: JobsEnv, tmp_path: Path) -> None:
    client = cancel_env.client
    gate = _gate_input(tmp_path, "checking")
    job_id = _submit(client, {"pipeline": "gated", "input": gate})
    wait_for(lambda: Path(gate["entered"]).exists())
    answer = client.post(f"/v1/jobs/{job_id}/cancel")
    assert answer.status_code == 202, answer.text
    assert (answer.json()["status"], answer.json()["cancel_requested"]) == ("PROCESSING", True)
    stopped = wait_for(lambda: _finished(client, job_id), timeout=STOP_WITHIN_S)
    assert stopped["status"] == "CANCELLED"
    assert stopped["error"]["code"] == "CANCELLED"
    assert [s["status"] for s in stopped["steps"]] == ["CANCELLED", "PENDING"]


def test_an_accepted_cancel_wins_over_the_result(cancel_env: JobsEnv, tmp_path: Path) -> None:
    """A step that never checks runs to its end: the job still ends CANCELLED, as the
    cancel's answer said, and its result is not kept."""
    client = cancel_env.client
    gate = _gate_input(tmp_path, "deaf")
    job_id = _submit(client, {"pipeline": "deaf", "input": gate})
    wait_for(lambda: Path(gate["entered"]).exists())
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    Path(gate["release"]).touch()
    done = wait_job(client, job_id)
    assert done["status"] == "CANCELLED"
    assert done["error"]["code"] == "CANCELLED"
    assert "result" not in done
    assert client.get(f"/v1/jobs/{job_id}/result").json()["code"] == "JOB_NOT_FINISHED"


def test_an_album_cancelled_in_its_first_step_ends_cancelled(cancel_env: JobsEnv) -> None:
    client = cancel_env.client
    photo = Image.fromarray(skimage.data.chelsea()).resize((1600, 1064))
    encoded = io.BytesIO()
    photo.save(encoded, format="JPEG", quality=90)
    # One photo first: the worker loads the pipeline's model on first use, and the
    # big album's cancel must find it decoding, not waiting for the load.
    warm = wait_job(client, _submit_album(client, encoded.getvalue(), 1))
    assert warm["status"] == "COMPLETED", warm
    job_id = _submit_album(client, encoded.getvalue(), 160)
    # Claimed is decoding: the first step starts as the worker's claim returns (and
    # its progress is written only every half second).
    wait_for(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] != "QUEUED", every=0.02)
    answer = client.post(f"/v1/jobs/{job_id}/cancel")
    assert answer.status_code == 202, answer.text
    stopped = wait_for(lambda: _finished(client, job_id), timeout=STOP_WITHIN_S)
    assert stopped["status"] == "CANCELLED"
    statuses = [s["status"] for s in stopped["steps"]]
    assert statuses == ["CANCELLED", "PENDING", "PENDING", "PENDING"], statuses
    assert stopped["steps"][0]["progress"] < 1  # it stopped between two photos


def _submit_album(client: httpx.Client, photo: bytes, count: int) -> str:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
        for i in range(count):
            zipped.writestr(f"album/{i:03d}.jpg", photo)
    response = client.post(
        "/v1/jobs",
        data={"pipeline": "album-tagging"},
        files={"file": ("album.zip", archive.getvalue(), "application/zip")},
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_cancel_of_a_finished_job_is_job_finished(cancel_env: JobsEnv) -> None:
    client = cancel_env.client
    digit = np.zeros(64).tolist()
    completed = wait_job(client, _submit(client, {"model": "digits", "input": {"instance": digit}}))
    assert completed["status"] == "COMPLETED"
    answer = client.post(f"/v1/jobs/{completed['id']}/cancel")
    assert answer.status_code == 409
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["code"] == "JOB_FINISHED"
    assert "COMPLETED" in answer.json()["detail"]
    after = client.get(f"/v1/jobs/{completed['id']}").json()
    assert (after["status"], after["cancel_requested"]) == ("COMPLETED", False)


def test_a_batch_cancelled_early_runs_no_line_that_had_not_started(
    cancel_env: JobsEnv, gates: Path
) -> None:
    """300 lines in 6 chunks of 50; the worker runs 2 chunks at once, their lines
    waiting in the model's queue behind a call held at its gate. The cancel ends
    the batch before the gate opens: no line gets an answer after it."""
    client = cancel_env.client
    for mark in ("model.entered", "model.open"):  # the other database's run left them
        (gates / mark).unlink(missing_ok=True)
    lines = b"\n".join(
        orjson.dumps({"custom_id": f"line-{i}", "input": [i, i]}) for i in range(300)
    )
    response = client.post(
        "/v1/batches?model=gated-model",
        content=lines,
        headers={"content-type": "application/jsonl"},
    )
    assert response.status_code == 202, response.text
    batch_id = response.json()["id"]
    wait_for(lambda: (gates / "model.entered").exists())
    cancelled = client.post(f"/v1/batches/{batch_id}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "CANCELLED"
    try:
        batch = wait_for(
            lambda: (b := client.get(f"/v1/batches/{batch_id}").json())["finished_at"] and b,
            timeout=STOP_WITHIN_S,
        )
    finally:
        (gates / "model.open").touch()  # let the held model call end, whatever happened
    assert batch["status"] == "CANCELLED"
    assert batch["counts"]["completed"] == batch["counts"]["failed"] == 0
    assert batch["counts"]["cancelled"] == 300
    assert client.get(f"/v1/batches/{batch_id}/results").content == b""
    chunks = client.get("/v1/jobs", params={"model": "gated-model", "limit": 50}).json()["jobs"]
    assert {c["status"] for c in chunks} == {"CANCELLED"}
    finished = client.post(f"/v1/batches/{batch_id}/cancel")
    assert finished.status_code == 200  # cancelled already: the same answer again


def _finished(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return job if job["status"] in ("COMPLETED", "FAILED", "CANCELLED") else None

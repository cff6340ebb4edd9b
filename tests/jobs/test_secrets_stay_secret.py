"""No secret modelplex was given or shown (database password, webhook secret,
credentials in a callback URL) appears in its logs, its error bodies or its views."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import httpx
import pytest

from tests.databases import fresh_database
from tests.jobs.conftest import job_settings
from tests.jobs.harness import (
    TEST_SECRET,
    ServerProcess,
    WorkerProcess,
    receiver,
    wait_for,
    wait_job,
)

DB_PASSWORD = "Pg-Passw0rd-S3cret"
HOOK_PASSWORD = "HookPass-S3cret"
TOKEN = "Tok-S3cret-123"
SIGNATURE = "Sig-S3cret-456"
SECRETS = [DB_PASSWORD, HOOK_PASSWORD, TOKEN, SIGNATURE, TEST_SECRET, TEST_SECRET[6:]]


def test_secrets_never_reach_logs_error_bodies_or_views(
    request: pytest.FixtureRequest, jobs_repo: Path, tmp_path: Path
) -> None:
    url = fresh_database(request, "postgresql", tmp_path)
    assert "//postgres@" in url
    # Trust authentication: any password is accepted, so this one is really used.
    url = url.replace("//postgres@", f"//postgres:{DB_PASSWORD}@", 1)
    settings = job_settings(tmp_path, url, access_log=True)
    seen: list[str] = []
    with contextlib.ExitStack() as stack:
        hooks = stack.enter_context(receiver())
        server = ServerProcess(settings, jobs_repo, tmp_path / "serve.log")
        stack.callback(server.terminate)
        worker = WorkerProcess(settings, jobs_repo, url)
        stack.callback(worker.terminate)
        client = stack.enter_context(httpx.Client(base_url=server.url, timeout=30))
        port = httpx.URL(hooks.url).port
        callback = (
            f"http://hooks:{HOOK_PASSWORD}@127.0.0.1:{port}/hook"
            f"?token={TOKEN}&sig={SIGNATURE}&tenant=blue"
        )
        body = {"model": "digits", "input": {"instance": [0] * 64}, "callback_url": callback}
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        job = wait_job(client, response.json()["id"])
        assert job["status"] == "COMPLETED", job
        wait_for(lambda: hooks.received)
        deliveries_url = f"/v1/jobs/{job['id']}/deliveries"

        def delivered() -> httpx.Response | None:
            answer = client.get(deliveries_url)
            return answer if answer.json()["deliveries"][0]["status"] == "DELIVERED" else None

        deliveries = wait_for(delivered)
        # The receiver got the real URL's credentials; views show them masked.
        assert hooks.received[0]["valid"]
        shown = client.get(f"/v1/jobs/{job['id']}").json()["callback_url"]
        assert shown == f"http://***@127.0.0.1:{port}/hook?token=***&sig=***&tenant=blue"
        assert deliveries.json()["deliveries"][0]["url"] == shown
        seen += [client.get(f"/v1/jobs/{job['id']}").text, deliveries.text]
        seen.append(client.get("/v1/jobs").text)
        # An error body about a refused callback URL names the reason, not the URL.
        refused = client.post(
            "/v1/jobs", json={**body, "callback_url": f"http://169.254.169.254/?token={TOKEN}"}
        )
        assert refused.status_code == 422
        seen.append(refused.text)
        worker.process.send_signal(signal.SIGTERM)
        _, worker_log = worker.process.communicate(timeout=60)
        server.terminate()
        seen += [server.log.read_text(), worker_log.decode()]
    server_log, worker_text = seen[-2], seen[-1]
    assert "modelplex serving" in server_log  # the logs were read
    assert "modelplex worker: jobs from postgresql+asyncpg://postgres:***@" in worker_text
    for text in seen:
        for secret in SECRETS:
            assert secret not in text, (secret, text[:2000])

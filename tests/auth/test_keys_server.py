"""A server on each kind of job database checks keys the CLI made in it, and
refuses them once the CLI revoked them (no restart, no shared process)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from modelplex.server import start
from tests.conftest import settings_for, wait_ready
from tests.helpers import write_python_model
from tests.test_cli import run_cli


def test_keys_made_and_revoked_by_the_cli_are_seen_by_a_running_server(
    database_url: str, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "doubler")
    settings = settings_for(tmp_path, auth="required", database_url=database_url, key_cache_ttl_s=0)
    env = {**os.environ, "MODELPLEX_DATABASE_URL": database_url,
           "MODELPLEX_DATA_DIR": str(settings.data_dir)}  # fmt: skip
    with start(settings, repo) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        wait_ready(http)
        assert http.get("/v1/models").status_code == 401
        made = run_cli("keys", "create", "--name", "a", "--scopes", "predict", "--json", env=env)
        assert made.returncode == 0, made.stderr
        key = made.stdout.split('"key": "', 1)[1].split('"', 1)[0]
        body = {"instance": [1.0, 2.0]}
        predicted = http.post("/v1/models/doubler/predict", json=body, headers={"X-API-Key": key})
        assert predicted.status_code == 200, predicted.text
        key_id = run_cli("keys", "list", env=env).stdout.split()[0]
        assert run_cli("keys", "revoke", key_id, env=env).returncode == 0
        refused = http.post("/v1/models/doubler/predict", json=body, headers={"X-API-Key": key})
        assert refused.status_code == 401

"""`modelplex keys` against each kind of database, with no server running."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.test_cli import run_cli


def test_create_list_rotate_revoke_without_a_server(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "MODELPLEX_DATABASE_URL": database_url,
           "MODELPLEX_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    created = run_cli(
        "keys", "create", "--name", "ci", "--scopes", "predict,jobs:write",
        "--models", "digits,recommender:*", "--expires-in", "30d", "--json", env=env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout)
    assert record["key"].startswith(record["prefix"] + "_")
    assert record["models"] == ["digits", "recommender:*"]
    assert record["expires_at"] - record["created_at"] == 30 * 86400

    listed = run_cli("keys", "list", "--json", env=env)
    keys = json.loads(listed.stdout)["keys"]
    assert [k["id"] for k in keys] == [record["id"]]
    assert record["key"] not in listed.stdout

    rotated = run_cli("keys", "rotate", record["id"], "--json", env=env)
    assert json.loads(rotated.stdout)["key"] != record["key"]
    revoked = run_cli("keys", "revoke", record["id"], env=env)
    assert revoked.returncode == 0
    assert "revoked" in revoked.stdout
    again = run_cli("keys", "rotate", record["id"], env=env)
    assert again.returncode == 1
    assert "revoked" in again.stderr

    bad = run_cli("keys", "create", "--name", "x", "--scopes", "predict,everything", env=env)
    assert bad.returncode == 1
    assert "everything" in bad.stderr
    assert (tmp_path / "data" / "key_pepper").stat().st_mode & 0o777 == 0o600

"""When a server checks credentials: the decision, and real `modelplex serve`
processes on loopback and on every address."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from modelplex.auth.mode import AuthMode, decide_mode, is_loopback
from modelplex.errors import ConfigurationError
from tests.helpers import write_python_model
from tests.test_cli import run_cli, serving


def test_the_decision() -> None:
    assert decide_mode(None, "127.0.0.1", has_keys=False, has_issuer=False) is AuthMode.OPEN
    assert decide_mode(None, "::1", has_keys=False, has_issuer=False) is AuthMode.OPEN
    assert decide_mode(None, "localhost", has_keys=False, has_issuer=False) is AuthMode.OPEN
    assert decide_mode(None, "127.0.0.1", has_keys=True, has_issuer=False) is AuthMode.REQUIRED
    assert decide_mode(None, "127.0.0.1", has_keys=False, has_issuer=True) is AuthMode.REQUIRED
    assert decide_mode(None, "0.0.0.0", has_keys=True, has_issuer=False) is AuthMode.REQUIRED
    assert decide_mode("required", "127.0.0.1", has_keys=False, has_issuer=False).enforcing
    assert decide_mode("disabled", "0.0.0.0", has_keys=True, has_issuer=True) is AuthMode.DISABLED
    with pytest.raises(ConfigurationError, match="MODELPLEX_AUTH=disabled"):
        decide_mode(None, "0.0.0.0", has_keys=False, has_issuer=False)
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("::")
    assert not is_loopback("10.1.2.3")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    write_python_model(tmp_path / "repo", "doubler")
    return {
        **os.environ,
        "MODELPLEX_MODEL_REPOSITORY": str(tmp_path / "repo"),
        "MODELPLEX_DATA_DIR": str(tmp_path / "data"),
        "MODELPLEX_WORKERS": "0",
        "MODELPLEX_GRPC_ENABLED": "false",
    }


def test_loopback_without_keys_runs_open_and_says_so(env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with serving([], env, log) as url:
        assert httpx.get(f"{url}/readyz").json()["auth"] == "open"
        assert httpx.get(f"{url}/v1/models").status_code == 200
    assert "serving without authentication" in log.read_text()


def test_loopback_with_a_key_requires_credentials(env: dict[str, str], tmp_path: Path) -> None:
    key = run_cli("keys", "create", "--name", "a", "--scopes", "predict", env=env).stdout.strip()
    with serving([], env, tmp_path / "serve.log") as url:
        assert httpx.get(f"{url}/readyz").json()["auth"] == "required"
        assert httpx.get(f"{url}/v1/models").status_code == 401
        headers = {"X-API-Key": key}
        assert httpx.get(f"{url}/v1/models", headers=headers).status_code == 200


def test_every_address_without_auth_refuses_to_start(env: dict[str, str]) -> None:
    done = run_cli("serve", "--host", "0.0.0.0", "--port", "0", env=env)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "refusing" in line]
    assert len(lines) == 1, done.stderr
    assert "MODELPLEX_AUTH=disabled" in lines[0]


def test_every_address_with_auth_disabled_serves_open(env: dict[str, str], tmp_path: Path) -> None:
    env = {**env, "MODELPLEX_AUTH": "disabled"}
    with serving(["--host", "0.0.0.0"], env, tmp_path / "serve.log") as url:
        assert httpx.get(f"{url}/readyz").json()["auth"] == "disabled"
        assert httpx.get(f"{url}/v1/models").status_code == 200

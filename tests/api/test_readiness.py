"""The readiness policy over a real server: `/readyz` and V2 server readiness agree.

Ready once loading is done, with at least one model READY and no `required`
model FAILED; with `strict_readiness`, no model FAILED at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from modelplex.server import start
from tests.conftest import settings_for, wait_ready
from tests.helpers import write_python_model


def _broken(repo: Path, name: str, *, required: bool, toml_typo: bool = False) -> None:
    """A model that fails: its artefact is missing, or (`toml_typo`) its model.toml
    has an unknown key, so only a lenient reading can see `required`."""
    folder = write_python_model(repo, name)
    (folder / "1" / "model.py").unlink()
    toml = folder / "model.toml"
    head = "required = true\n" if required else ""
    head += "timeout_msec = 5\n" if toml_typo else ""
    toml.write_text(head + toml.read_text())


@contextmanager
def _server(tmp_path: Path, repo: Path, **settings: Any) -> Iterator[httpx.Client]:
    repo.mkdir(exist_ok=True)
    with (
        start(settings_for(tmp_path, **settings), repo) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        wait_ready(http)
        yield http


def _not_ready(http: httpx.Client) -> str:
    """The reason both endpoints give; they must say the same."""
    readyz = http.get("/readyz")
    assert readyz.status_code == 503, readyz.text
    body = readyz.json()
    assert body["status"] == "not_ready"
    v2 = http.get("/v2/health/ready")
    assert v2.status_code == 400  # the protocol: a 4xx means false
    assert v2.json() == {"error": body["reason"]}
    return str(body["reason"])


def _ready(http: httpx.Client) -> dict[str, Any]:
    readyz = http.get("/readyz")
    assert readyz.status_code == 200, readyz.text
    assert http.get("/v2/health/ready").status_code == 200
    body: dict[str, Any] = readyz.json()
    assert body["status"] == "ready"
    return body


def test_an_empty_repository_is_not_ready(tmp_path: Path) -> None:
    with _server(tmp_path, tmp_path / "repo") as http:
        assert _not_ready(http) == "no model is ready"
        assert http.get("/healthz").status_code == 200  # alive all the same


def test_only_broken_models_is_not_ready(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _broken(repo, "broken", required=False)
    with _server(tmp_path, repo) as http:
        assert _not_ready(http) == "no model is ready"
        assert "broken" in http.get("/readyz").json()["models"]["failed"]


def test_a_broken_model_that_is_not_required_leaves_the_server_ready(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "doubler")
    _broken(repo, "broken", required=False)
    with _server(tmp_path, repo) as http:
        body = _ready(http)
        assert body["models"]["ready"] == ["doubler"]
        assert set(body["models"]["failed"]) == {"broken"}


def test_strict_readiness_any_failed_model_is_not_ready(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "doubler")
    _broken(repo, "broken", required=False)
    with _server(tmp_path, repo, strict_readiness=True) as http:
        assert _not_ready(http) == "models failed to load (strict readiness): broken"


def test_a_failed_required_model_is_not_ready_until_it_loads(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "doubler")
    _broken(repo, "needed", required=True)
    _broken(repo, "needed-typo", required=True, toml_typo=True)
    with _server(tmp_path, repo) as http:
        assert _not_ready(http) == "required models failed to load: needed, needed-typo"
        # Fixed and loaded again: the server turns ready without a restart.
        for name in ("needed", "needed-typo"):
            write_python_model(tmp_path / "fixed", name)
            (repo / name / "1" / "model.py").write_text(
                (tmp_path / "fixed" / name / "1" / "model.py").read_text()
            )
        toml = repo / "needed-typo" / "model.toml"
        toml.write_text(toml.read_text().replace("timeout_msec = 5\n", ""))
        for name in ("needed", "needed-typo"):
            loaded = http.post(f"/v2/repository/models/{name}/load")
            assert loaded.status_code == 200, loaded.text
        assert set(_ready(http)["models"]["ready"]) == {"doubler", "needed", "needed-typo"}

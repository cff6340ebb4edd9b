"""Schema-driven fuzzing (schemathesis) of the whole OpenAPI document over real HTTP:
every operation, every check; no server error and no status the document does
not declare."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis

from modelplex.server import RunningServer, start
from tests.conftest import settings_for, wait_ready
from tests.helpers import copy_model, write_python_model
from tests.test_cli import run_cli

# Inference may refuse a schema-valid body: the document cannot know a model's
# signature (GET /v1/models/{model} states it), whether its inputs are all BYTES
# (multipart), or whether bytes decode as an image. A client's deadline header of
# 1 ms may expire: INFERENCE_TIMEOUT (504) is then the right answer, not a bug.
INFERENCE = {
    "checks": {
        "positive_data_acceptance": {"expected-statuses": ["2xx", "404", "415", "422"]},
        "not_a_server_error": {"expected-statuses": ["2xx", "4xx", "504"]},
    }
}
V2_INFERENCE = {
    "checks": {
        "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "404", "415"]},
        "not_a_server_error": {"expected-statuses": ["2xx", "4xx", "504"]},
    }
}
CONFIG_DOCUMENT: dict[str, Any] = {
    "generation": {"max-examples": 12, "deterministic": True, "database": "none"},
    "parameters": {"path.model": "digits", "path.version": "2"},
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409"]}},
    "operations": [
        {"include-path-regex": "^/v1/(models/.*/predict|classify)$", **INFERENCE},
        {"include-path-regex": "^/v2/models/.*/infer$", **V2_INFERENCE},
        # A job's or a batch's input must fit its model or pipeline, like a predict body.
        {"include-path-regex": "^/v1/(jobs|batches)$", **INFERENCE},
        {
            # A model of its own, so that unloading it leaves the others serving;
            # load parameters are refused (a model's folder is its only source).
            "include-path-regex": "^/v2/repository/models/",
            "parameters": {"path.model": "scratch"},
            "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "404"]}},
        },
    ],
}


@dataclass
class FuzzServer:
    url: str
    key: str


@pytest.fixture(scope="module")
def fuzz_server(
    example_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FuzzServer]:
    repo = tmp_path_factory.mktemp("fuzz-repo")
    copy_model(example_repo, "digits", repo)
    write_python_model(repo, "doubler")
    write_python_model(repo, "scratch")
    (repo / "echo").mkdir()
    (repo / "echo" / "pipeline.toml").write_text('[[steps]]\nname = "echo"\nfunction = "echo"\n')
    (repo / "echo" / "steps.py").write_text(
        textwrap.dedent(
            """
            def echo(ctx, data):
                return data
            """
        )
    )
    # Private callback URLs allowed: the fuzzer's loopback and private addresses are
    # accepted (its made-up host names do not resolve: 422).
    # Credentials required, as the document declares: the fuzzer sends an admin key,
    # and its own check that bad credentials are refused (401) holds.
    settings = settings_for(
        tmp_path_factory.mktemp("fuzz-state"), webhook_allow_private=True, auth="required"
    )
    server: RunningServer
    with start(settings, repo) as server:
        env = {**os.environ, "MODELPLEX_DATA_DIR": str(settings.data_dir)}
        made = run_cli("keys", "create", "--name", "fuzz", "--scopes", "admin", env=env)
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        with httpx.Client(base_url=server.url, timeout=30, headers={"X-API-Key": key}) as http:
            wait_ready(http)
        yield FuzzServer(server.url, key)


@pytest.fixture(scope="module")
def served_document(fuzz_server: FuzzServer) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict(
        {
            **CONFIG_DOCUMENT,
            "auth": {
                "openapi": {
                    "ApiKey": {"api_key": fuzz_server.key},
                    "Bearer": {"bearer": fuzz_server.key},
                }
            },
        }
    )
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("served_document")


@schema.parametrize()
def test_every_operation_keeps_its_documented_contract(case: schemathesis.Case) -> None:
    case.call_and_validate()

"""The Open Inference Protocol's own REST specification, fuzzed against the /v2 routes.

The specification is MLServer's published copy of the protocol's REST API
(`mlserver/rest/openapi/dataplane.json` in the `mlserver` wheel on PyPI,
Apache-2.0), which `scripts/setup.sh` extracts: kserve's own
`open_inference_rest.yaml` ships in no registry package. Operations the
protocol defines and modelplex does not serve (`infer_stream`, `generate`)
are left out.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis

from modelplex.server import RunningServer, start
from tests.conftest import settings_for, wait_ready
from tests.helpers import copy_model

SPEC = Path(sys.prefix) / "share" / "modelplex" / "oip-dataplane.json"


def load_spec() -> dict[str, Any]:
    if not SPEC.is_file():
        raise FileNotFoundError(f"{SPEC} is missing: run scripts/setup.sh")
    return dict(_fixed(json.loads(SPEC.read_text())))


def _fixed(node: Any) -> Any:
    """The one place MLServer's copy is not valid OpenAPI: tensor data typed "bytes",
    which JSON Schema does not have (the protocol sends BYTES as strings)."""
    if isinstance(node, dict):
        if node == {"type": "bytes"}:
            return {"type": "string"}
        return {key: _fixed(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_fixed(item) for item in node]
    return node


CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"max-examples": 15, "deterministic": True, "database": "none"},
        "parameters": {"path.model_name": "digits", "path.model_version": "2"},
        "checks": {
            # The protocol answers a request it cannot serve with 400 (and 404 for an
            # unknown model): a schema-valid tensor may still not fit the model.
            "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "404"]},
            # The specification documents only 200 for readiness and metadata, where
            # the protocol's text says "a 4xx status code indicates false".
            "status_code_conformance": {"enabled": False},
        },
    }
)

schema = (
    schemathesis.openapi.from_dict(load_spec(), config=CONFIG)
    .include(path_regex=r"^/v2")
    .exclude(path_regex=r"/(infer_stream|generate|generate_stream)$")
)


@pytest.fixture(scope="module")
def oip_server(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repo = tmp_path_factory.mktemp("oip-repo")
    copy_model(example_repo, "digits", repo)
    server: RunningServer
    with start(settings_for(tmp_path_factory.mktemp("oip-state")), repo) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            wait_ready(http)
        yield server.url


@schema.parametrize()
def test_the_protocol_specification_holds(case: schemathesis.Case, oip_server: str) -> None:
    case.call_and_validate(base_url=oip_server)

"""Bearer tokens at the door: a `modelplex serve` process that trusts a real
OAuth2 issuer (its JWKS over HTTP), the Python client and the CLI obtaining
tokens themselves, and REST and gRPC requests held to the token's scopes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from modelplex.client import ModelplexClient
from modelplex.oauth_client import ClientCredentials
from tests.auth.issuer import AUDIENCE, Issuer, running_issuer
from tests.auth.test_jwt import issued_token
from tests.helpers import copy_model
from tests.test_cli import free_port, run_cli, serving

PIXELS = np.zeros((1, 64), dtype=np.float32)


@dataclass
class Trusting:
    url: str
    grpc: str
    issuer: Issuer


@pytest.fixture(scope="module")
def trusting(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trusting]:
    root = tmp_path_factory.mktemp("bearer-door")
    copy_model(example_repo, "digits", root / "repo")
    grpc_port = free_port()
    with running_issuer() as issuer:
        issuer.add_client("svc", "svc-secret", "predict jobs:read jobs:write")
        issuer.add_client("reader", "reader-secret", "jobs:read")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MODELPLEX_")},
            # No MODELPLEX_AUTH: a configured issuer alone makes credentials required.
            "MODELPLEX_JWT_ISSUER": issuer.url,
            "MODELPLEX_JWT_AUDIENCE": AUDIENCE,
            "MODELPLEX_JWT_JWKS_URL": issuer.jwks_url,
            "MODELPLEX_GRPC_PORT": str(grpc_port),
            "MODELPLEX_WORKERS": "0",
            "MODELPLEX_DATA_DIR": str(root / "data"),
        }
        args = ["--model-repository", str(root / "repo")]
        with serving(args, env, root / "serve.log") as url:
            assert httpx.get(f"{url}/readyz", timeout=5).json()["auth"] == "required"
            yield Trusting(url, f"127.0.0.1:{grpc_port}", issuer)


def test_the_client_obtains_a_token_and_predicts(trusting: Trusting) -> None:
    refused = httpx.post(f"{trusting.url}/v1/models/digits/predict", json={"instance": [0] * 64})
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    oauth = ClientCredentials(trusting.issuer.token_url, "svc", "svc-secret", scope="predict")
    with ModelplexClient(trusting.url, oauth=oauth) as client:
        answer = client.predict("digits", [[0.0] * 64])
    assert answer["model"]["name"] == "digits"


def test_a_token_without_the_scope_is_forbidden_on_rest_and_grpc(trusting: Trusting) -> None:
    token = issued_token(trusting.issuer, scope="jobs:read")
    headers = {"Authorization": f"Bearer {token}"}
    answer = httpx.post(
        f"{trusting.url}/v1/models/digits/predict", json={"instance": [0] * 64}, headers=headers
    )
    assert (answer.status_code, answer.json()["code"]) == (403, "FORBIDDEN")
    good = issued_token(trusting.issuer, scope="predict")
    client = triton.InferenceServerClient(trusting.grpc)
    try:
        tensor = triton.InferInput("pixels", [1, 64], "FP32")
        tensor.set_data_from_numpy(PIXELS)
        done = client.infer("digits", [tensor], headers={"authorization": f"Bearer {good}"})
        assert done.as_numpy("label") is not None
        with pytest.raises(InferenceServerException) as forbidden:
            client.infer("digits", [tensor], headers={"authorization": f"Bearer {token}"})
        assert forbidden.value.status() == "StatusCode.PERMISSION_DENIED"
        with pytest.raises(InferenceServerException) as forged:
            client.infer("digits", [tensor], headers={"authorization": f"Bearer {good}x"})
        assert forged.value.status() == "StatusCode.UNAUTHENTICATED"
    finally:
        client.close()


def test_the_cli_obtains_a_token_from_the_environment(trusting: Trusting) -> None:
    env = {
        **os.environ,
        "MODELPLEX_OAUTH_TOKEN_URL": trusting.issuer.token_url,
        "MODELPLEX_OAUTH_CLIENT_ID": "svc",
        "MODELPLEX_OAUTH_CLIENT_SECRET": "svc-secret",
        "MODELPLEX_OAUTH_SCOPE": "predict",
    }
    listed = run_cli("models", "list", "--url", trusting.url, env=env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("digits")
    anonymous = run_cli("models", "list", "--url", trusting.url)
    assert anonymous.returncode == 1
    assert "UNAUTHENTICATED" in anonymous.stderr

"""The door over real sockets: a `modelplex serve` process with
MODELPLEX_AUTH=required (keys read on every request: cache TTL 0), keys made
with the real `modelplex keys` command against its database, and REST and gRPC
clients. gRPC runs against the server's own process (see tests/conftest.py on
why one process cannot hold both generated protocol modules)."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from modelplex.settings import Settings
from tests.helpers import copy_model
from tests.test_cli import free_port, run_cli, serving

OPEN_REST = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/docs",
             "/docs/oauth2-redirect", "/redoc", "/openapi.json"}  # fmt: skip
OPEN_GRPC = {"ServerLive", "ServerReady"}
PIXELS = np.zeros((1, 64), dtype=np.float32)


@dataclass
class Door:
    url: str
    grpc: str
    env: dict[str, str]
    admin: str

    def key(self, *args: str) -> str:
        done = run_cli("keys", "create", "--name", "t", *args, env=self.env)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


@pytest.fixture(scope="module")
def door(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Door]:
    root = tmp_path_factory.mktemp("door")
    for model in ("digits", "image-classifier"):
        copy_model(example_repo, model, root / "repo")
    grpc_port = free_port()
    env = {
        **os.environ,
        "MODELPLEX_AUTH": "required",
        "MODELPLEX_KEY_CACHE_TTL_S": "0",
        "MODELPLEX_GRPC_PORT": str(grpc_port),
        "MODELPLEX_WORKERS": "0",
        "MODELPLEX_DATA_DIR": str(root / "data"),
    }
    created = run_cli("keys", "create", "--name", "admin", "--scopes", "admin", env=env)
    assert created.returncode == 0, created.stderr
    with serving(["--model-repository", str(root / "repo")], env, root / "serve.log") as url:
        yield Door(url, f"127.0.0.1:{grpc_port}", env, created.stdout.strip())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def rest_routes() -> list[tuple[str, str]]:
    """Every (method, path) of the app's route table, parameters filled in."""
    from modelplex.api.app import create_app

    app = create_app(SimpleNamespace(settings=Settings(), auth=None))  # type: ignore[arg-type]

    def flat(routes: list[Any]) -> Iterator[Any]:
        for route in routes:
            included = getattr(route, "original_router", None)  # an included router
            yield from flat(included.routes) if included is not None else [route]

    found = []
    for route in flat(app.routes):
        path = re.sub(r"\{model\}", "digits", getattr(route, "path", ""))
        path = re.sub(r"\{version\}", "2", path)
        path = re.sub(r"\{[^}]+\}", "x", path)
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                found.append((method, path))
    return found


def grpc_methods() -> list[tuple[str, bool]]:
    """Every RPC of the service descriptor modelplex serves: (name, client streaming)."""
    script = (
        "from modelplex.grpc.protos import inference_pb2 as p\n"
        "s = p.DESCRIPTOR.services_by_name['GRPCInferenceService']\n"
        "print(s.full_name)\n"
        "for m in s.methods: print(m.name, int(m.client_streaming))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split("\n")
    return [(f"/{out[0]}/{line.split()[0]}", line.split()[1] == "1") for line in out[1:] if line]


def test_every_rest_route_but_probes_and_docs_needs_credentials(door: Door) -> None:
    routes = rest_routes()
    assert ("POST", "/v1/models/digits/predict") in routes
    assert ("POST", "/v1/admin/keys") in routes
    assert len(routes) > 40
    with httpx.Client(base_url=door.url, timeout=30) as http:
        for method, path in routes:
            response = http.request(method, path)
            if path in OPEN_REST:
                assert response.status_code in (200, 307), (method, path, response.text)
                continue
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer", (method, path)
            if not path.startswith("/v2"):
                assert response.json()["code"] == "UNAUTHENTICATED", (method, path)


def test_every_grpc_method_but_liveness_and_readiness_needs_credentials(door: Door) -> None:
    methods = grpc_methods()
    assert len(methods) >= 12
    with grpc.insecure_channel(door.grpc) as channel:
        for path, streaming in methods:
            name = path.rsplit("/", 1)[1]
            try:
                if streaming:
                    list(channel.stream_stream(path)(iter([b""]), timeout=10))
                else:
                    channel.unary_unary(path)(b"", timeout=10)
            except grpc.RpcError as exc:
                code = exc.code()
            else:
                code = grpc.StatusCode.OK
            if name in OPEN_GRPC:
                assert code == grpc.StatusCode.OK, name
            else:
                assert code == grpc.StatusCode.UNAUTHENTICATED, (name, code)


def test_a_key_is_sent_as_bearer_or_x_api_key_and_garbage_is_refused(door: Door) -> None:
    key = door.key("--scopes", "predict")
    body = {"instances": PIXELS.tolist()}
    with httpx.Client(base_url=door.url, timeout=30) as http:
        assert http.post("/v1/models/digits/predict", json=body, headers=bearer(key)).is_success
        assert http.post("/v1/models/digits/predict", json=body, headers={"X-API-Key": key})
        for wrong in ("mpx_00000000_" + "a" * 43, "garbage", "a.b.c", key + "x"):
            response = http.post("/v1/models/digits/predict", json=body, headers=bearer(wrong))
            assert response.status_code == 401, wrong
        response = http.get("/v1/models", headers={"Authorization": f"Basic {key}"})
        assert response.status_code == 401
        ready = http.get("/readyz").json()
        assert ready["auth"] == "required"


def test_a_key_limited_to_digits_cannot_use_image_classifier(door: Door) -> None:
    key = door.key("--scopes", "predict,jobs:write,batches:write", "--models", "digits")
    with httpx.Client(base_url=door.url, timeout=30, headers=bearer(key)) as http:
        pixels = {"instances": PIXELS.tolist()}
        assert http.post("/v1/models/digits/predict", json=pixels).status_code == 200
        assert http.post("/v1/models/digits/versions/2/predict", json=pixels).status_code == 200
        for path in ("/v1/models/image-classifier/predict", "/v2/models/image-classifier/infer",
                     "/v1/models/image-classifier"):  # fmt: skip
            response = (
                http.post(path, json={})
                if "predict" in path or "infer" in path
                else (http.get(path))
            )
            assert response.status_code == 403, (path, response.text)
        response = http.post("/v1/classify", json={"image": "aGk="})
        assert response.status_code == 403
        assert response.json()["code"] == "FORBIDDEN"
        job = http.post("/v1/jobs", json={"model": "image-classifier", "input": {}})
        assert job.status_code == 403
        assert job.json()["code"] == "FORBIDDEN"
        batch = http.post(
            "/v1/batches?model=image-classifier", content=b'{"custom_id":"a","input":{}}\n',
            headers={"Content-Type": "application/jsonl"},
        )  # fmt: skip
        assert batch.status_code == 403, batch.text

    client = triton.InferenceServerClient(door.grpc)
    try:
        headers = {"authorization": f"Bearer {key}"}
        tensor = triton.InferInput("pixels", [1, 64], "FP32")
        tensor.set_data_from_numpy(PIXELS)
        assert client.infer("digits", [tensor], headers=headers).as_numpy("label") is not None
        with pytest.raises(InferenceServerException) as refused:
            client.infer("image-classifier", [tensor], headers=headers)
        assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
        with pytest.raises(InferenceServerException) as meta:
            client.get_model_metadata("image-classifier", headers=headers)
        assert meta.value.status() == "StatusCode.PERMISSION_DENIED"
        with pytest.raises(InferenceServerException) as anonymous:
            client.infer("digits", [tensor])
        assert anonymous.value.status() == "StatusCode.UNAUTHENTICATED"
    finally:
        client.close()


def test_a_missing_scope_is_forbidden_on_rest_and_grpc(door: Door) -> None:
    key = door.key("--scopes", "predict")
    with httpx.Client(base_url=door.url, timeout=30, headers=bearer(key)) as http:
        for method, path in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", "/v1/batches"),
                             ("POST", "/v2/repository/models/digits/unload"),
                             ("GET", "/v1/admin/keys")]:  # fmt: skip
            response = http.request(method, path)
            assert response.status_code == 403, (method, path, response.text)
    client = triton.InferenceServerClient(door.grpc)
    try:
        with pytest.raises(InferenceServerException) as refused:
            client.unload_model("digits", headers={"authorization": f"Bearer {key}"})
        assert refused.value.status() == "StatusCode.PERMISSION_DENIED"
        assert client.is_model_ready("digits", headers={"authorization": f"Bearer {key}"})
    finally:
        client.close()


def test_revoked_and_expired_keys_are_refused_and_the_cli_round_trip(door: Door) -> None:
    done = run_cli("keys", "create", "--name", "ci", "--scopes", "predict", "--json",
                   "--rate-limit", "50/second", env=door.env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    key = record.pop("key")
    assert record["rate_limit"] == "50/second"
    assert record["state"] == "active"
    short = door.key("--scopes", "predict", "--expires-in", "1s")
    with httpx.Client(base_url=door.url, timeout=30) as http:
        assert http.get("/v1/models", headers=bearer(key)).status_code == 200
        listed = run_cli("keys", "list", env=door.env)
        assert record["id"] in listed.stdout
        assert key not in listed.stdout

        rotated = run_cli("keys", "rotate", record["id"], env=door.env)
        assert rotated.returncode == 0, rotated.stderr
        new_key = rotated.stdout.strip()
        assert http.get("/v1/models", headers=bearer(key)).status_code == 401
        assert http.get("/v1/models", headers=bearer(new_key)).status_code == 200

        revoked = run_cli("keys", "revoke", record["id"], env=door.env)
        assert revoked.returncode == 0
        assert "revoked" in revoked.stdout
        assert http.get("/v1/models", headers=bearer(new_key)).status_code == 401

        deadline = time.monotonic() + 10
        while http.get("/v1/models", headers=bearer(short)).status_code == 200:
            assert time.monotonic() < deadline, "an expired key was still accepted"
            time.sleep(0.2)
        assert http.get("/v1/models", headers=bearer(short)).status_code == 401
    missing = run_cli("keys", "revoke", "key_missing", env=door.env)
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr


def test_the_admin_api_creates_lists_rotates_and_revokes(door: Door) -> None:
    with httpx.Client(base_url=door.url, timeout=30, headers=bearer(door.admin)) as http:
        created = http.post("/v1/admin/keys", json={"name": "svc", "scopes": ["jobs:read"]})
        assert created.status_code == 201, created.text
        body: dict[str, Any] = created.json()
        key, key_id = body["key"], body["id"]
        assert key_id.startswith("key_")
        assert key.startswith(body["prefix"] + "_")
        listed = http.get("/v1/admin/keys").json()["keys"]
        assert key_id in {k["id"] for k in listed}
        assert key not in json.dumps(listed)
        assert http.get(f"/v1/admin/keys/{key_id}").json()["scopes"] == ["jobs:read"]
        assert http.get("/v1/jobs", headers=bearer(key)).status_code == 200
        assert http.get("/v1/models", headers=bearer(key)).status_code == 403
        rotated = http.post(f"/v1/admin/keys/{key_id}/rotate").json()["key"]
        assert http.get("/v1/jobs", headers=bearer(key)).status_code == 401
        assert http.get("/v1/jobs", headers=bearer(rotated)).status_code == 200
        assert http.post(f"/v1/admin/keys/{key_id}/revoke").json()["state"] == "revoked"
        assert http.get("/v1/jobs", headers=bearer(rotated)).status_code == 401
        missing = http.get("/v1/admin/keys/key_missing")
        assert missing.status_code == 404
        assert missing.json()["code"] == "KEY_NOT_FOUND"
        bad = http.post("/v1/admin/keys", json={"name": "x", "scopes": ["everything"]})
        assert bad.status_code == 422


def test_each_request_of_a_stream_is_held_to_the_allow_list(door: Door) -> None:
    key = door.key("--scopes", "predict", "--models", "digits")
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = triton.InferenceServerClient(door.grpc)
    try:
        client.start_stream(
            lambda result, error: answers.put((result, error)),
            headers={"authorization": f"Bearer {key}"},
        )
        tensor = triton.InferInput("pixels", [1, 64], "FP32")
        tensor.set_data_from_numpy(PIXELS)
        client.async_stream_infer("digits", [tensor], request_id="ok")
        client.async_stream_infer("image-classifier", [tensor], request_id="no")
        got = [answers.get(timeout=30) for _ in range(2)]
    finally:
        client.stop_stream()
        client.close()
    errors = [str(error) for _, error in got if error is not None]
    assert len(errors) == 1, got
    assert "image-classifier" in errors[0]
    assert sum(result is not None for result, _ in got) == 1

"""Hostile JSON and heavy uploads over a real socket: every route bounds what it parses.

Each attack asserts its stable code and that the server still answers an
ordinary predict afterwards. The server runs with small JSON limits so the
bodies stay small: the limits, not their defaults, are what is tested.
"""

from __future__ import annotations

import hashlib
import os
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sklearn.datasets import load_digits

from modelplex.server import RunningServer, start
from tests.api.conftest import ECHO_BYTES_CODE, ECHO_BYTES_TOML
from tests.conftest import settings_for, wait_ready
from tests.helpers import copy_model, write_model
from tests.jobs.harness import WorkerProcess, wait_for, wait_job

MAX_JSON = 256 * 1024
MAX_ELEMENTS = 20_000
MAX_UPLOAD = 24 * 1024 * 1024
DIGIT = load_digits(return_X_y=True)[0][0].tolist()
JSON = {"content-type": "application/json"}

DIGEST_PIPELINE = """
[input]
upload = true

[[steps]]
name = "digest"
function = "digest"
"""
DIGEST_STEPS = """
import hashlib

def digest(ctx, data):
    upload = ctx.read_upload()
    return {"sha256": hashlib.sha256(upload).hexdigest(), "bytes": len(upload)}

def echo(ctx, data):
    return data
"""
ECHO_PIPELINE = """
[[steps]]
name = "echo"
function = "echo"
"""


@dataclass
class Hostile:
    server: RunningServer
    http: httpx.Client

    def assert_still_serving(self) -> None:
        response = self.http.post("/v1/models/digits/predict", json={"instance": DIGIT})
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["label"] == "0"


@pytest.fixture(scope="module")
def hostile(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    tmp = tmp_path_factory.mktemp("hostile")
    repo = tmp / "repo"
    repo.mkdir()
    copy_model(example_repo, "digits", repo)
    write_model(repo, "bytes-many", ECHO_BYTES_TOML.format(shape="[-1]"), ECHO_BYTES_CODE)
    for name, toml in (("digest", DIGEST_PIPELINE), ("echo", ECHO_PIPELINE)):
        (repo / name).mkdir()
        (repo / name / "pipeline.toml").write_text(textwrap.dedent(toml))
        (repo / name / "steps.py").write_text(textwrap.dedent(DIGEST_STEPS))
    url = f"sqlite+aiosqlite:///{tmp / 'jobs.db'}"
    settings = settings_for(
        tmp,
        database_url=url,
        job_poll_s=0.05,
        max_request_bytes=2 * 1024 * 1024,
        max_upload_bytes=MAX_UPLOAD,
        max_json_bytes=MAX_JSON,
        max_json_elements=MAX_ELEMENTS,
    )
    with (
        start(settings, repo) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        worker = WorkerProcess(settings, repo, url)
        try:
            wait_ready(http)
            yield Hostile(server, http)
        finally:
            worker.terminate()


def deep(levels: int, leaf: bytes = b"1") -> bytes:
    return b"[" * levels + leaf + b"]" * levels


def assert_problem(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code
    return str(body["detail"])


def assert_v2_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return str(response.json()["error"])


JSON_ROUTES = [
    "/v1/models/digits/predict",
    "/v1/classify",
    "/v1/jobs",
    "/v1/batches",
    "/v2/models/digits/infer",
    "/v2/repository/index",
    "/v2/repository/models/digits/load",
]


@pytest.mark.parametrize("route", JSON_ROUTES)
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_json_is_refused_before_it_is_read(
    hostile: Hostile, route: str, chunked: bool
) -> None:
    """Over max_json_bytes, even where files may be far larger (jobs, batches)."""
    body = b'{"instance": [' + b"1," * (MAX_JSON // 2) + b"1]}"
    content: Any = body
    if chunked:  # no Content-Length: counted while it arrives

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(body), 64 * 1024):
                yield body[start : start + 64 * 1024]

        content = chunks()
    response = hostile.http.post(route, content=content, headers=JSON)
    if route.startswith("/v2"):
        assert_v2_error(response, 413)
    elif route == "/v1/batches" and chunked:  # takes no JSON: refused unread
        assert_problem(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    else:
        assert_problem(response, 413, "PAYLOAD_TOO_LARGE")
    hostile.assert_still_serving()


def test_json_in_disguise_is_held_to_the_json_limit(hostile: Hostile) -> None:
    """V2 infer parses its body whatever the content type says."""
    body = b'{"inputs": [{"name": "pixels", "data": [' + b"1," * (MAX_JSON // 2) + b"1]}]}"
    response = hostile.http.post(
        "/v2/models/digits/infer", content=body, headers={"content-type": "text/plain"}
    )
    assert "limit" in assert_v2_error(response, 413)
    hostile.assert_still_serving()


LEVELS = [40, 1000, 100_000]


@pytest.mark.parametrize("levels", LEVELS)
def test_deep_predict_body(hostile: Hostile, levels: int) -> None:
    body = b'{"instance": ' + deep(levels) + b"}"
    response = hostile.http.post("/v1/models/digits/predict", content=body, headers=JSON)
    assert "deeper than 32" in assert_problem(response, 422, "INVALID_INPUT")
    hostile.assert_still_serving()


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("target", ["model", "pipeline"])
def test_deep_job_input(hostile: Hostile, levels: int, target: str) -> None:
    if target == "model":
        body = b'{"model": "digits", "input": {"instance": ' + deep(levels) + b"}}"
    else:
        body = b'{"pipeline": "echo", "input": {"x": ' + deep(levels) + b"}}"
    response = hostile.http.post("/v1/jobs", content=body, headers=JSON)
    assert_problem(response, 422, "INVALID_INPUT")
    hostile.assert_still_serving()


def test_deep_metadata_in_a_form(hostile: Hostile) -> None:
    response = hostile.http.post(
        "/v1/jobs",
        data={"pipeline": "digest", "metadata": deep(300, b"{}").decode()},
        files={"file": ("a.bin", b"abc")},
    )
    assert_problem(response, 422, "INVALID_INPUT")
    hostile.assert_still_serving()


@pytest.mark.parametrize("levels", LEVELS)
def test_deep_batch_line_fails_alone(hostile: Hostile, levels: int) -> None:
    lines = [
        orjson.dumps({"custom_id": "ok", "input": DIGIT}),
        b'{"custom_id": "deep", "input": ' + deep(levels) + b"}",
        orjson.dumps({"custom_id": "many", "input": [0] * (MAX_ELEMENTS + 1)}),
    ]
    response = hostile.http.post(
        "/v1/batches",
        params={"model": "digits"},
        content=b"\n".join(lines),
        headers={"content-type": "application/jsonl"},
    )
    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["counts"]["total"] == 3
    errors = [orjson.loads(line) for line in _batch_lines(hostile, batch["id"], "errors")]
    refused = {e["line"]: e["error"] for e in errors}
    assert refused[2]["code"] == "INVALID_INPUT"
    assert "deeper than" in refused[2]["message"]
    assert refused[3]["code"] == "INVALID_INPUT"
    assert "JSON values" in refused[3]["message"]
    results = _batch_lines(hostile, batch["id"], "results")
    assert [orjson.loads(line)["custom_id"] for line in results] == ["ok"]
    hostile.assert_still_serving()


def _batch_lines(hostile: Hostile, batch_id: str, kind: str) -> list[bytes]:
    def finished() -> dict[str, Any] | None:
        batch: dict[str, Any] = hostile.http.get(f"/v1/batches/{batch_id}").json()
        return batch if batch.get("finished_at") else None

    wait_for(finished)
    response = hostile.http.get(f"/v1/batches/{batch_id}/{kind}")
    assert response.status_code == 200
    return [line for line in response.content.splitlines() if line.strip()]


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize(
    ("model", "datatype"), [("digits", "FP32"), ("bytes-many", "BYTES")], ids=["fp32", "bytes"]
)
def test_deep_v2_tensor_data(hostile: Hostile, levels: int, model: str, datatype: str) -> None:
    leaf = b'"a"' if datatype == "BYTES" else b"1"
    body = (
        b'{"inputs": [{"name": "'
        + (b"text" if datatype == "BYTES" else b"pixels")
        + b'", "datatype": "'
        + datatype.encode()
        + b'", "shape": [1], "data": '
        + deep(levels, leaf)
        + b"}]}"
    )
    response = hostile.http.post(f"/v2/models/{model}/infer", content=body, headers=JSON)
    assert "deeper than 32" in assert_v2_error(response, 400)
    hostile.assert_still_serving()


def test_deep_bytes_within_the_depth_limit_is_a_clean_400(hostile: Hostile) -> None:
    """30 dimensions of BYTES data, and a shape of 70 dimensions: the protocol's 400."""
    body = {
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [1] * 30, "data": [[["a"]]]},
        ]
    }
    nested: Any = "a"
    for _ in range(29):
        nested = [nested]
    body["inputs"][0]["data"] = nested
    response = hostile.http.post("/v2/models/bytes-many/infer", json=body)
    assert response.status_code in (200, 400), response.text
    body["inputs"][0]["shape"] = [1] * 70
    body["inputs"][0]["data"] = ["a"]
    response = hostile.http.post("/v2/models/bytes-many/infer", json=body)
    assert_v2_error(response, 400)
    hostile.assert_still_serving()


def test_element_bomb(hostile: Hostile) -> None:
    many = b"[" + b"0," * MAX_ELEMENTS + b"0]"  # under the byte limit, over the count
    cases = [
        ("/v1/models/digits/predict", b'{"instances": ' + many + b"}"),
        ("/v1/jobs", b'{"pipeline": "echo", "input": {"x": ' + many + b"}}"),
        ("/v2/models/digits/infer", b'{"inputs": [{"name": "pixels", "datatype": "FP32", '
         b'"shape": [1], "data": ' + many + b"}]}"),
    ]  # fmt: skip
    for route, body in cases:
        assert len(body) < MAX_JSON
        response = hostile.http.post(route, content=body, headers=JSON)
        if route.startswith("/v2"):
            assert "JSON values" in assert_v2_error(response, 400)
        else:
            assert "JSON values" in assert_problem(response, 422, "INVALID_INPUT")
        hostile.assert_still_serving()


def test_brackets_inside_strings_are_text(hostile: Hostile) -> None:
    """The scan skips strings (escaped quotes included): a deep-looking text is fine."""
    text = '[[[{{{"\\"' * 50 + "]]]"
    response = hostile.http.post("/v1/jobs", json={"pipeline": "echo", "input": {"text": text}})
    assert response.status_code == 202, response.text
    done = wait_job(hostile.http, response.json()["id"])
    assert done["status"] == "COMPLETED", done
    assert hostile.http.get(f"/v1/jobs/{done['id']}/result").json() == {"text": text}


def test_big_upload_is_streamed_to_the_blob_store_intact(hostile: Hostile) -> None:
    """Far over the JSON limit and Starlette's in-memory spool: accepted, byte for byte."""
    data = os.urandom(12 * 1024 * 1024)
    key = {"Idempotency-Key": "big-upload"}
    response = hostile.http.post(
        "/v1/jobs", data={"pipeline": "digest"}, files={"file": ("big.bin", data)}, headers=key
    )
    assert response.status_code == 202, response.text
    done = wait_job(hostile.http, response.json()["id"])
    assert done["status"] == "COMPLETED", done
    result = hostile.http.get(f"/v1/jobs/{done['id']}/result").json()
    assert result == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    # The idempotency fingerprint hashes the upload as it streams: same file, same job.
    again = hostile.http.post(
        "/v1/jobs", data={"pipeline": "digest"}, files={"file": ("big.bin", data)}, headers=key
    )
    assert again.status_code == 202
    assert again.json()["id"] == done["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = hostile.http.post(
        "/v1/jobs",
        data={"pipeline": "digest"},
        files={"file": ("big.bin", data[:-1] + b"x")},
        headers=key,
    )
    assert_problem(other, 409, "IDEMPOTENCY_CONFLICT")
    hostile.assert_still_serving()


def test_upload_over_the_upload_limit_is_refused_while_streaming(hostile: Hostile) -> None:
    boundary = b"hostileboundary"

    def form() -> Iterator[bytes]:  # chunked: no Content-Length to refuse it up front
        yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="pipeline"\r\n\r\n'
        yield b"digest\r\n--" + boundary + b"\r\n"
        yield b'Content-Disposition: form-data; name="file"; filename="x.bin"\r\n'
        yield b"Content-Type: application/octet-stream\r\n\r\n"
        for _ in range(MAX_UPLOAD // (1024 * 1024) + 2):
            yield b"\0" * (1024 * 1024)
        yield b"\r\n--" + boundary + b"--\r\n"

    response = hostile.http.post(
        "/v1/jobs",
        content=form(),
        headers={"content-type": f"multipart/form-data; boundary={boundary.decode()}"},
    )
    assert_problem(response, 413, "PAYLOAD_TOO_LARGE")
    hostile.assert_still_serving()

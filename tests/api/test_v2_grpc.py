"""The Open Inference Protocol over gRPC with the stock tritonclient, KServe's clients,
the standard health service and reflection. The server runs as its own process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException

from modelplex.grpc import codegen
from tests.helpers import copy_model, write_python_model
from tests.test_cli import free_port

DIGITS = load_digits(return_X_y=True)[0][1500:1506].astype(np.float32)
HERE = Path(__file__).resolve().parent


@dataclass
class GrpcServer:
    http: httpx.Client
    address: str
    rest_url: str
    pid: int


@pytest.fixture(scope="module")
def grpc_server(
    example_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GrpcServer]:
    root = tmp_path_factory.mktemp("grpc")
    repo = root / "repo"
    for model in ("digits", "image-classifier"):
        copy_model(example_repo, model, repo)
    write_python_model(repo, "held", delay_ms=600)
    write_python_model(
        repo, "tiny-queue", delay_ms=300, timeout_ms=10_000,
        batching="[batching]\nmax_batch_size = 1\nmax_queue_size = 2\n",
    )  # fmt: skip
    http_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "MODELPLEX_GRPC_PORT": str(grpc_port),
        "MODELPLEX_WORKERS": "0",
        "MODELPLEX_DATA_DIR": str(root / "data"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "modelplex", "serve", "--port", str(http_port),
         "--model-repository", str(repo)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    rest_url = f"http://127.0.0.1:{http_port}"
    try:
        with httpx.Client(base_url=rest_url, timeout=30) as http:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, "server exited"
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.1)
            yield GrpcServer(http, f"127.0.0.1:{grpc_port}", rest_url, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def client(grpc_server: GrpcServer) -> Iterator[triton.InferenceServerClient]:
    stub = triton.InferenceServerClient(grpc_server.address)
    yield stub
    stub.close()


def test_generated_code_matches_the_proto() -> None:
    assert codegen.is_current(), "run python -m modelplex.grpc.codegen"


def test_health_metadata_config_statistics_repository(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.get_server_metadata(as_json=True)["name"] == "modelplex"
    metadata = client.get_model_metadata("digits", as_json=True)
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": ["-1", "64"]}]
    config = client.get_model_config("digits", as_json=True)["config"]
    assert config["max_batch_size"] == 64
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "digits", "version": "2", "state": "READY"} in index
    before = client.get_inference_statistics("digits", "2", as_json=True)["model_stats"][0]
    tensor = triton.InferInput("pixels", [2, 64], "FP32")
    tensor.set_data_from_numpy(DIGITS[:2])
    client.infer("digits", [tensor])
    after = client.get_inference_statistics("digits", "2", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 2


def test_infer_matches_the_v1_api(
    client: triton.InferenceServerClient, grpc_server: GrpcServer
) -> None:
    tensor = triton.InferInput("pixels", list(DIGITS.shape), "FP32")
    tensor.set_data_from_numpy(DIGITS)
    result = client.infer("digits", [tensor], request_id="g-1")
    assert result.get_response().id == "g-1"
    v1 = grpc_server.http.post(
        "/v1/models/digits/predict", json={"instances": DIGITS.tolist()}
    ).json()
    assert result.as_numpy("label").tolist() == [p["class_id"] for p in v1["predictions"]]
    np.testing.assert_allclose(
        result.as_numpy("probabilities").max(axis=1),
        [p["confidence"] for p in v1["predictions"]],
        rtol=1e-5,
    )


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_gzip_bomb_is_resource_exhausted_without_inflating(
    client: triton.InferenceServerClient, grpc_server: GrpcServer
) -> None:
    """64 MiB of zeros, gzip-compressed by tritonclient to about 64 KiB: grpc core
    stops inflating at the 16 MiB receive limit, so the server never holds it."""
    inflated = 64 * 1024 * 1024
    before = peak_rss_bytes(grpc_server.pid)
    tensor = triton.InferInput("pixels", [inflated // 256, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((inflated // 256, 64), np.float32))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("digits", [tensor], compression_algorithm="gzip", client_timeout=60)
    assert raised.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert peak_rss_bytes(grpc_server.pid) - before < inflated // 4
    ordinary = triton.InferInput("pixels", [2, 64], "FP32")
    ordinary.set_data_from_numpy(DIGITS[:2])
    result = client.infer("digits", [ordinary], compression_algorithm="gzip")
    assert result.as_numpy("label").shape == (2,)


def test_typed_contents_without_raw_bytes(grpc_server: GrpcServer) -> None:
    """`contents` instead of `raw_input_contents`, with tritonclient's own messages."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(grpc_server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="digits")
        tensor = request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
        tensor.contents.fp32_contents.extend(DIGITS[0].tolist())
        response = stub.ModelInfer(request, timeout=30)
    names = [o.name for o in response.outputs]
    labels = np.frombuffer(response.raw_output_contents[names.index("label")], dtype="<i8")
    assert labels.tolist() == [int(load_digits(return_X_y=True)[1][1500])]


def test_malformed_requests_are_invalid_argument(grpc_server: GrpcServer) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    def call(build: Callable[[service_pb2.ModelInferRequest], None]) -> grpc.RpcError:
        request = service_pb2.ModelInferRequest(model_name="digits")
        build(request)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(request, timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return raised.value

    def huge_shape(request: service_pb2.ModelInferRequest) -> None:
        request.inputs.add(name="pixels", datatype="FP32", shape=[2**62, 2**62])
        request.raw_input_contents.append(b"")

    def int_out_of_range(request: service_pb2.ModelInferRequest) -> None:
        request.model_name = "tiny-queue"
        tensor = request.inputs.add(name="x", datatype="INT8", shape=[1, 2])
        tensor.contents.int_contents.extend([1, 300])

    def bad_timeout(request: service_pb2.ModelInferRequest) -> None:
        tensor = request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
        tensor.contents.fp32_contents.extend(DIGITS[0].tolist())
        request.parameters["timeout"].string_param = "soon"

    with grpc.insecure_channel(grpc_server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert "shape must be" in str(call(huge_shape).details())
        assert "out of range for INT8" in str(call(int_out_of_range).details())
        assert "timeout parameter" in str(call(bad_timeout).details())
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="digits", version="9"))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_image_classification_over_grpc(
    client: triton.InferenceServerClient, photos: dict[str, bytes]
) -> None:
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([photos["coffee.png"]], dtype=object))
    result = client.infer(
        "image-classifier", [tensor],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=2)],
    )  # fmt: skip
    top = result.as_numpy("probabilities")[0][0].decode()
    assert top.split(":")[1:] == ["967", "espresso"]


def test_bidirectional_stream(client: triton.InferenceServerClient) -> None:
    answers: list[tuple[triton.InferResult | None, InferenceServerException | None]] = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    for i in range(6):
        tensor = triton.InferInput("pixels", [1, 64], "FP32")
        tensor.set_data_from_numpy(DIGITS[i : i + 1])
        client.async_stream_infer("digits", [tensor], request_id=f"s-{i}")
    bad = triton.InferInput("pixels", [1, 64], "FP64")
    bad.set_data_from_numpy(DIGITS[:1].astype(np.float64))
    client.async_stream_infer("digits", [bad], request_id="s-bad")
    deadline = time.monotonic() + 30
    while len(answers) < 7 and time.monotonic() < deadline:
        time.sleep(0.02)
    client.stop_stream()
    results = {r.get_response().id: r for r, e in answers if r is not None}
    errors = [e for r, e in answers if e is not None]
    assert sorted(results) == [f"s-{i}" for i in range(6)]
    expected = load_digits(return_X_y=True)[1][1500:1506].tolist()
    assert [int(results[f"s-{i}"].as_numpy("label")[0]) for i in range(6)] == expected
    assert len(errors) == 1
    assert "datatype FP64" in str(errors[0])


def test_a_long_stream_is_answered_in_full(client: triton.InferenceServerClient) -> None:
    """More requests than the in-flight bound (servicer.STREAM_IN_FLIGHT, 64; not
    imported: its protobuf module cannot share a process with tritonclient's):
    the gate must hand out places again."""
    answers: list[tuple[triton.InferResult | None, InferenceServerException | None]] = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    total = 200
    for i in range(total):
        tensor = triton.InferInput("pixels", [1, 64], "FP32")
        tensor.set_data_from_numpy(DIGITS[i % 6 : i % 6 + 1])
        client.async_stream_infer("digits", [tensor], request_id=f"n-{i}")
    deadline = time.monotonic() + 60
    while len(answers) < total and time.monotonic() < deadline:
        time.sleep(0.02)
    client.stop_stream()
    assert [e for _, e in answers if e is not None] == []
    assert sorted(r.get_response().id for r, _ in answers if r is not None) == sorted(
        f"n-{i}" for i in range(total)
    )


def expect_status(call: Callable[[], object], status: str, fragment: str = "") -> None:
    with pytest.raises(InferenceServerException) as raised:
        call()
    assert raised.value.status() == status
    assert fragment in (raised.value.message() or "")


def test_error_paths_map_to_grpc_status_codes(client: triton.InferenceServerClient) -> None:
    good = triton.InferInput("pixels", [1, 64], "FP32")
    good.set_data_from_numpy(DIGITS[:1])
    expect_status(lambda: client.infer("nope", [good]), "StatusCode.NOT_FOUND", "does not exist")
    expect_status(lambda: client.get_model_metadata("nope"), "StatusCode.NOT_FOUND")
    wrong_type = triton.InferInput("pixels", [1, 64], "FP64")
    wrong_type.set_data_from_numpy(DIGITS[:1].astype(np.float64))
    expect_status(
        lambda: client.infer("digits", [wrong_type]), "StatusCode.INVALID_ARGUMENT", "FP64"
    )
    wrong_shape = triton.InferInput("pixels", [1, 63], "FP32")
    wrong_shape.set_data_from_numpy(DIGITS[:1, :63])
    expect_status(
        lambda: client.infer("digits", [wrong_shape]), "StatusCode.INVALID_ARGUMENT", "shape"
    )
    slow = triton.InferInput("x", [1, 2], "FP32")
    slow.set_data_from_numpy(np.ones((1, 2), dtype=np.float32))
    expect_status(
        lambda: client.infer("held", [slow], client_timeout=0.15), "StatusCode.DEADLINE_EXCEEDED"
    )


def test_overload_is_resource_exhausted(grpc_server: GrpcServer) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(grpc_server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="tiny-queue")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
        request.raw_input_contents.append(np.ones((1, 2), dtype="<f4").tobytes())
        calls = [stub.ModelInfer.future(request, timeout=30) for _ in range(12)]
        codes = []
        for call in calls:
            try:
                call.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 8


def test_standard_health_checking_and_reflection(grpc_server: GrpcServer) -> None:
    with grpc.insecure_channel(grpc_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as raised:
            health.Check(health_pb2.HealthCheckRequest(service="unknown.Service"), timeout=10)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [response] = list(reflection.ServerReflectionInfo(iter([request]), timeout=10))
        services = {s.name for s in response.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= services


def test_kserve_clients(grpc_server: GrpcServer) -> None:
    """KServe's InferenceRESTClient and InferenceGRPCClient, unmodified."""
    result = subprocess.run(
        [sys.executable, str(HERE / "kserve_client.py"), grpc_server.rest_url, grpc_server.address],
        input=json.dumps(DIGITS[:3].tolist()),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    expected = load_digits(return_X_y=True)[1][1500:1503].tolist()
    assert answer["rest_ready"] is True
    assert answer["grpc_ready"] is True
    assert answer["rest"]["label"] == expected
    assert answer["grpc"]["label"] == expected
    assert answer["grpc_id"] == "k-1"


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("shape", "has shape [1, 63], instances of shape [63]"),
        ("output", "unknown outputs ['nope']"),
        ("rows", "accepts at most 1024 per request"),
    ],
)
def test_one_bad_input_gets_one_code_and_message_on_every_transport(
    grpc_server: GrpcServer, case: str, fragment: str
) -> None:
    """The same bad input over /v1, V2 REST, gRPC and job submission: one validator
    answers, so the code and the message are the same on all four."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    rows = {"shape": np.zeros((1, 63)), "output": DIGITS[:1], "rows": np.zeros((1025, 64))}[case]
    rows = rows.astype(np.float32)
    outputs = ["nope"] if case == "output" else None
    body: dict[str, object] = {"instances": rows.tolist()}
    if outputs:
        body["parameters"] = {"outputs": outputs}
    v1 = grpc_server.http.post("/v1/models/digits/predict", json=body)
    job = grpc_server.http.post("/v1/jobs", json={"model": "digits", "input": body})
    v2_body: dict[str, object] = {
        "inputs": [
            {"name": "pixels", "datatype": "FP32", "shape": list(rows.shape),
             "data": rows.reshape(-1).tolist()}
        ]
    }  # fmt: skip
    if outputs:
        v2_body["outputs"] = [{"name": name} for name in outputs]
    v2 = grpc_server.http.post("/v2/models/digits/infer", json=v2_body)
    message = service_pb2.ModelInferRequest(model_name="digits")
    message.inputs.add(name="pixels", datatype="FP32", shape=list(rows.shape))
    message.raw_input_contents.append(rows.tobytes())
    for name in outputs or []:
        message.outputs.add(name=name)
    with grpc.insecure_channel(grpc_server.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(message, timeout=30)

    for problem in (v1, job):
        assert problem.status_code == 422, problem.text
        assert problem.json()["code"] == "INVALID_INPUT"
    assert v2.status_code == 400, v2.text
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    messages = {
        v1.json()["detail"],
        job.json()["detail"],
        v2.json()["error"],
        refused.value.details(),
    }
    assert len(messages) == 1, messages
    assert fragment in messages.pop()

"""The Open Inference Protocol over REST with the stock tritonclient (HTTP), JSON and binary."""

from __future__ import annotations

import gzip
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException

from modelplex.core.model_config import load_model_config
from modelplex.core.preprocessing import ImagePreprocessor
from modelplex.server import RunningServer, start
from tests.conftest import settings_for, wait_ready
from tests.helpers import write_python_model

DIGITS = load_digits(return_X_y=True)[0][1500:1508].astype(np.float32)


def triton_client(server: RunningServer) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=30)


@pytest.fixture
def triton_http(
    example_server: RunningServer, client: httpx.Client
) -> Iterator[triton.InferenceServerClient]:
    http = triton_client(example_server)
    yield http
    http.close()


def test_health_and_metadata(triton_http: triton.InferenceServerClient) -> None:
    assert triton_http.is_server_live()
    assert triton_http.is_server_ready()
    metadata = triton_http.get_server_metadata()
    assert metadata["name"] == "modelplex"
    assert "binary_tensor_data" in metadata["extensions"]
    digits = triton_http.get_model_metadata("digits")
    assert digits["versions"] == ["1", "2"]
    assert digits["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert triton_http.is_model_ready("digits")
    assert triton_http.is_model_ready("digits", "1")
    images = triton_http.get_model_metadata("image-classifier")
    assert images["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    bare = triton_http.get_model_metadata("efficientnet-lite0")
    assert bare["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("version", ["", "1"])
def test_digits_match_the_v1_api(
    triton_http: triton.InferenceServerClient, client: httpx.Client, binary: bool, version: str
) -> None:
    tensor = triton.InferInput("pixels", list(DIGITS.shape), "FP32")
    tensor.set_data_from_numpy(DIGITS, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=binary),
        triton.InferRequestedOutput("label", binary_data=binary),
    ]
    result = triton_http.infer(
        "digits", [tensor], model_version=version, outputs=outputs, request_id="r-7"
    )
    assert result.get_response()["id"] == "r-7"
    assert result.get_response()["model_version"] == (version or "2")
    path = (
        f"/v1/models/digits/versions/{version}/predict" if version else "/v1/models/digits/predict"
    )
    v1 = client.post(path, json={"instances": DIGITS.tolist(), "parameters": {"top_k": 10}}).json()
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (8, 10)
    assert result.as_numpy("label").tolist() == [p["class_id"] for p in v1["predictions"]]
    expected = np.zeros((8, 10), dtype=np.float32)
    for row, prediction in enumerate(v1["predictions"]):
        for c in prediction["top_k"]:
            expected[row, c["class_id"]] = c["confidence"]
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)


def test_image_bytes_with_the_classification_extension(
    triton_http: triton.InferenceServerClient, client: httpx.Client, photos: dict[str, bytes]
) -> None:
    names = sorted(photos)
    tensor = triton.InferInput("image", [len(names)], "BYTES")
    tensor.set_data_from_numpy(np.array([photos[n] for n in names], dtype=object))
    result = triton_http.infer(
        "image-classifier", [tensor],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=3)],
    )  # fmt: skip
    rows = result.as_numpy("probabilities")
    assert rows.shape == (3, 3)
    for name, row in zip(names, rows, strict=True):
        v1 = client.post("/v1/classify", files={"image": (name, photos[name])}, data={"top_k": "3"})
        expected = [p["class_id"] for p in v1.json()["predictions"]]
        got = [int(entry.decode().split(":")[1]) for entry in row]
        assert got == expected
        score, _, label = row[0].decode().split(":", 2)
        assert label == v1.json()["predictions"][0]["label"]
        assert float(score) == pytest.approx(v1.json()["predictions"][0]["confidence"], abs=1e-5)


def test_bare_network_on_preprocessed_tensors(
    triton_http: triton.InferenceServerClient, example_repo: Path, photos: dict[str, bytes]
) -> None:
    """Clients that pre-process themselves send FP32 NCHW tensors to efficientnet-lite0."""
    config = load_model_config(example_repo / "image-classifier" / "model.toml")
    assert config.preprocessing is not None
    files = np.empty(1, dtype=object)
    files[0] = photos["coffee.png"]
    pixels = ImagePreprocessor(config.preprocessing, 10**8)({"image": files}).inputs["input"]
    tensor = triton.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    result = triton_http.infer("efficientnet-lite0", [tensor])
    assert int(result.as_numpy("probabilities")[0].argmax()) == 967


def test_compressed_requests_and_responses(triton_http: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("pixels", list(DIGITS.shape), "FP32")
    tensor.set_data_from_numpy(DIGITS, binary_data=False)
    plain = triton_http.infer("digits", [tensor]).as_numpy("probabilities")
    for algorithm in ("gzip", "deflate"):
        result = triton_http.infer(
            "digits", [tensor],
            request_compression_algorithm=algorithm, response_compression_algorithm=algorithm,
        )  # fmt: skip
        np.testing.assert_array_equal(result.as_numpy("probabilities"), plain)


def test_config_and_statistics(triton_http: triton.InferenceServerClient) -> None:
    config = triton_http.get_model_config("digits")
    assert config["max_batch_size"] == 64
    assert config["input"] == [{"name": "pixels", "data_type": "TYPE_FP32", "dims": [64]}]
    before = triton_http.get_inference_statistics("digits", "2")["model_stats"][0]
    tensor = triton.InferInput("pixels", [2, 64], "FP32")
    tensor.set_data_from_numpy(DIGITS[:2])
    triton_http.infer("digits", [tensor])
    after = triton_http.get_inference_statistics("digits", "2")["model_stats"][0]
    assert after["inference_count"] == before["inference_count"] + 2
    assert (
        after["inference_stats"]["success"]["count"]
        == before["inference_stats"]["success"]["count"] + 1
    )
    assert {
        "name": "digits",
        "version": "2",
        "state": "READY",
    } in triton_http.get_model_repository_index()


def expect_error(call: Callable[[], object], status: int, fragment: str) -> None:
    with pytest.raises(InferenceServerException) as raised:
        call()
    assert raised.value.status() == str(status)
    assert fragment in raised.value.message()


def test_error_paths(triton_http: triton.InferenceServerClient) -> None:
    good = triton.InferInput("pixels", [1, 64], "FP32")
    good.set_data_from_numpy(DIGITS[:1])
    expect_error(lambda: triton_http.infer("nope", [good]), 404, "does not exist")
    expect_error(lambda: triton_http.infer("digits", [good], model_version="9"), 404, "no version")
    wrong_type = triton.InferInput("pixels", [1, 64], "FP64")
    wrong_type.set_data_from_numpy(DIGITS[:1].astype(np.float64))
    expect_error(lambda: triton_http.infer("digits", [wrong_type]), 400, "datatype FP64")
    wrong_shape = triton.InferInput("pixels", [2, 32], "FP32")
    wrong_shape.set_data_from_numpy(DIGITS[:1].reshape(2, 32))
    expect_error(lambda: triton_http.infer("digits", [wrong_shape]), 400, "shape [2, 32]")
    broken = triton.InferInput("image", [1], "BYTES")
    broken.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    expect_error(lambda: triton_http.infer("image-classifier", [broken]), 400, "image")


def test_paths_and_statuses_follow_the_protocol(zoo: httpx.Client) -> None:
    """The spec's own spelling of server metadata, and readiness as it says: 200 or
    a 4xx for "not ready", 404 for a model or version that does not exist."""
    spelled = zoo.get("/v2/", follow_redirects=False)
    assert spelled.status_code == 200
    assert spelled.json() == zoo.get("/v2").json()
    assert zoo.get("/v2/models/versioned/versions/2/ready").status_code == 200
    missing = zoo.get("/v2/models/versioned/versions/7/ready")
    assert missing.status_code == 404
    assert missing.json() == {"error": "model 'versioned' has no version '7'"}
    assert zoo.get("/v2/models/nope/ready").status_code == 404
    broken = zoo.get("/v2/models/half-broken/versions/2/ready")  # failed to load
    assert broken.status_code == 400
    assert "not ready" in broken.json()["error"]
    assert zoo.get("/v2/models/bad-toml/ready").status_code == 400
    assert zoo.get("/v2/health/live").content == b""


def test_error_bodies_follow_the_protocol(client: httpx.Client) -> None:
    response = client.post("/v2/models/digits/infer", json={"inputs": "nope"})
    assert response.status_code == 400
    assert response.json() == {"error": "'inputs': must be a non-empty list"}
    assert client.get("/v2/models/nope").json()["error"] == "model 'nope' does not exist"
    bad_binary = client.post(
        "/v2/models/digits/infer",
        content=b'{"inputs":[{"name":"pixels","datatype":"FP32","shape":[1,64],'
        b'"parameters":{"binary_data_size":256}}]}' + b"\x00" * 10,
        headers={
            "Inference-Header-Content-Length": "96",
            "Content-Type": "application/octet-stream",
        },
    )
    assert bad_binary.status_code == 400
    bomb = client.post(
        "/v2/models/digits/infer",
        content=b"\x1f\x8b not gzip",
        headers={"Content-Encoding": "gzip"},
    )
    assert bomb.status_code == 400


def _infer(client: httpx.Client, tensor: dict[str, object], **body: object) -> httpx.Response:
    return client.post("/v2/models/digits/infer", json={"inputs": [tensor], **body})


def nested(value: object, depth: int) -> object:
    for _ in range(depth):
        value = [value]
    return value


def _pixels(**fields: object) -> dict[str, object]:
    return {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64, **fields}


@pytest.mark.parametrize(
    ("tensor", "fragment"),
    [
        (_pixels(shape=[2**40 + 1]), "shape must be"),
        (_pixels(shape=[2**40, 2**40, 2**40]), "64 values for shape"),
        (_pixels(shape=[1] * 40), "at most 32 dimensions"),
        (_pixels(shape=[0, 2**40], data=[]), "shape"),
        (_pixels(data=[[0.0] * 32, [[0.0] * 31]]), "data is ragged"),
        (_pixels(shape=[1, 1], data=nested([0], 40)), "nested deeper"),
        (_pixels(datatype="FP16", data=[70000.0] * 64), "out of range"),
        (_pixels(data=[True] * 64), "expects numbers"),
        (_pixels(data=["1"] * 64), "expects numbers"),
        (_pixels(parameters={"binary_data_size": True}), "binary_data_size"),
    ],
)  # fmt: skip
def test_hostile_tensors_get_clear_errors(
    client: httpx.Client, tensor: dict[str, object], fragment: str
) -> None:
    response = _infer(client, tensor)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


def test_flags_and_headers_are_read_strictly(client: httpx.Client) -> None:
    typo = _infer(client, _pixels(), parameters={"binary_data_output": "yes"})
    assert typo.status_code == 400
    assert "binary_data_output" in typo.json()["error"]
    output = _infer(
        client, _pixels(), outputs=[{"name": "label", "parameters": {"binary_data": 1}}]
    )
    assert output.status_code == 400
    ready = client.post("/v2/repository/index", json={"ready": "false"})
    assert ready.status_code == 400
    body = b'{"inputs":[{"name":"pixels","datatype":"FP32","shape":[1,64],"data":' + (
        b"[" + b",".join([b"0.5"] * 64) + b"]}]}"
    )
    # Digits int() would read but the header grammar does not allow, and overlong ones.
    for length in ("\u00b2".encode("latin-1"), "\u0661".encode(), b"+12", b"-1", b"1" * 13):
        response = client.post(
            "/v2/models/digits/infer",
            content=body,
            headers={"Inference-Header-Content-Length": length},
        )
        assert response.status_code == 400, length
        assert "Inference-Header-Content-Length" in response.json()["error"]
    refused = client.post(
        "/v2/models/digits/infer",
        content=body.replace(b"[1,64]", b"[8,64]").replace(
            b"[" + b",".join([b"0.5"] * 64) + b"]", b"[" + b",".join([b"0.5"] * 512) + b"]"
        ),
        headers={"Accept-Encoding": "gzip;q=0, deflate;q=0"},
    )
    assert refused.status_code == 200
    assert "content-encoding" not in refused.headers
    assert len(refused.content) > 1024  # large enough that it would have been compressed


def test_statistics_of_an_unknown_version_is_not_found(client: httpx.Client) -> None:
    response = client.get("/v2/models/digits/versions/9/stats")
    assert response.status_code == 404
    assert "no loaded version '9'" in response.json()["error"]


def test_timeout_parameter_is_validated(client: httpx.Client) -> None:
    response = _infer(client, _pixels(), parameters={"timeout": "soon"})
    assert response.status_code == 400
    assert "timeout" in response.json()["error"]


def test_deadline_and_overload(zoo_server: RunningServer, zoo: httpx.Client) -> None:
    http = triton.InferenceServerClient(zoo_server.url.removeprefix("http://"), concurrency=12)
    slow = triton.InferInput("x", [1, 2], "FP32")
    slow.set_data_from_numpy(np.ones((1, 2), dtype=np.float32))
    expect_error(lambda: http.infer("held", [slow], timeout=100_000), 504, "did not answer")
    pending = [http.async_infer("tiny-queue", [slow]) for _ in range(12)]
    statuses = []
    for request in pending:
        try:
            request.get_result()
            statuses.append("200")
        except InferenceServerException as exc:
            statuses.append(exc.status())
    assert set(statuses) == {"200", "503"}  # a queue of 2 + 1 running; the rest shed at once
    assert statuses.count("503") >= 8
    http.close()


def test_repository_load_and_unload(
    example_repo: Path, tmp_path: Path, photos: dict[str, bytes]
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(example_repo / "digits", repo / "digits")
    shutil.rmtree(repo / "digits" / "1")
    with start(settings_for(tmp_path), repo) as server, httpx.Client(base_url=server.url) as http:
        wait_ready(http)
        tritonc = triton_client(server)
        assert tritonc.get_model_metadata("digits")["versions"] == ["2"]
        tritonc.unload_model("digits")
        assert not tritonc.is_model_ready("digits")
        tensor = triton.InferInput("pixels", [1, 64], "FP32")
        tensor.set_data_from_numpy(DIGITS[:1])
        expect_error(lambda: tritonc.infer("digits", [tensor]), 503, "not ready")
        shutil.copytree(example_repo / "digits" / "1", repo / "digits" / "1")  # a new version
        shutil.copytree(example_repo / "digits" / "2", repo / "digits" / "3")
        tritonc.load_model("digits")
        assert tritonc.is_model_ready("digits")
        assert tritonc.get_model_metadata("digits")["versions"] == ["1", "2", "3"]
        assert tritonc.infer("digits", [tensor], model_version="3").as_numpy("label").shape == (1,)
        expect_error(lambda: tritonc.load_model("nothing-here"), 404, "not in the repository")
        expect_error(
            lambda: tritonc.load_model("digits", config='{"max_batch_size": 2}'),
            400,
            "not supported",
        )
        assert tritonc.is_model_ready("digits")
        tritonc.close()


def test_classification_count_is_capped_at_the_classes(
    triton_http: triton.InferenceServerClient,
) -> None:
    tensor = triton.InferInput("pixels", [2, 64], "FP32")
    tensor.set_data_from_numpy(DIGITS[:2])
    result = triton_http.infer(
        "digits", [tensor], outputs=[triton.InferRequestedOutput("probabilities", class_count=25)]
    )
    assert result.as_numpy("probabilities").shape == (2, 10)


def test_a_small_gzip_bomb_stays_small(zoo: httpx.Client) -> None:
    bomb = gzip.compress(b"0" * (8 * 1024 * 1024))  # 8 MiB of zeros in a few KiB
    response = zoo.post(
        "/v2/models/doubler/infer",
        content=bomb,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert "decompressed" in response.json()["error"]


def test_reload_lets_accepted_requests_finish(zoo_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    write_python_model(repo, "held", delay_ms=600)
    with (
        start(settings_for(tmp_path), repo) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        wait_ready(http)
        answers: dict[str, httpx.Response] = {}

        def slow_request() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as other:
                answers["r"] = other.post("/v1/models/held/predict", json={"instance": [1, 2]})

        runner = threading.Thread(target=slow_request)
        runner.start()
        time.sleep(0.2)  # the request is running on the old version
        assert http.post("/v2/repository/models/held/load").status_code == 200
        runner.join(timeout=30)
        assert answers["r"].status_code == 200
        assert answers["r"].json()["predictions"] == [{"y": [2.0, 4.0]}]
        after = http.post("/v1/models/held/predict", json={"instance": [3, 4]})
        assert after.json()["predictions"] == [{"y": [6.0, 8.0]}]


def test_a_load_answers_its_outcome_and_refuses_a_pipeline(
    example_repo: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    toml = write_python_model(repo, "doubler") / "model.toml"
    working = toml.read_text()
    broken = write_python_model(repo, "broken") / "model.toml"
    broken.write_text(working.replace("[python]", "[python]\nclas_name = 'Model'"))
    shutil.copytree(example_repo / "album-tagging", repo / "album-tagging")
    with (
        start(settings_for(tmp_path), repo) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        wait_ready(http)
        # Still broken: the protocol's error status and body, with the reason.
        still = http.post("/v2/repository/models/broken/load")
        assert still.status_code == 400
        assert "model 'broken' failed to load" in still.json()["error"]
        assert "clas_name" in still.json()["error"]
        # A serving model whose folder breaks keeps serving what it had.
        toml.write_text(working.replace("[python]", "[python]\nclas_name = 'Model'"))
        failed = http.post("/v2/repository/models/doubler/load")
        assert failed.status_code == 400
        assert "keep serving" in failed.json()["error"]
        answer = http.post("/v1/models/doubler/predict", json={"instance": [1, 2]})
        assert answer.json()["predictions"] == [{"y": [2.0, 4.0]}]
        toml.write_text(working)
        fixed = http.post("/v2/repository/models/doubler/load")
        assert (fixed.status_code, fixed.content) == (200, b"")
        # A pipeline is not a model: refused, and no model entry appears.
        pipeline = http.post("/v2/repository/models/album-tagging/load")
        assert pipeline.status_code == 404
        assert "is a pipeline, not a model" in pipeline.json()["error"]
        names = [m["name"] for m in http.post("/v2/repository/index").json()]
        assert names == ["broken", "doubler"]

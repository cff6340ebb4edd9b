"""Every error code over real HTTP: status, stable code, problem+json, request id."""

from __future__ import annotations

import asyncio
import io
import threading
import time

import httpx
import pytest
from PIL import Image

from modelplex.server import RunningServer

PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert body["detail"]
    return body


def test_undecodable_image_is_invalid_input(client: httpx.Client) -> None:
    response = client.post("/v1/classify", files={"image": ("x.jpg", b"not an image at all")})
    body = assert_problem(response, 422, "INVALID_INPUT")
    assert "JPEG, PNG or WebP" in str(body["detail"])


def test_truncated_image_is_invalid_input(client: httpx.Client, photos: dict[str, bytes]) -> None:
    truncated = photos["cat.jpg"][: len(photos["cat.jpg"]) // 3]
    response = client.post("/v1/classify", files={"image": ("x.jpg", truncated)})
    assert_problem(response, 422, "INVALID_INPUT")


def test_unsupported_image_format_is_invalid_input(client: httpx.Client) -> None:
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, format="GIF")
    response = client.post("/v1/classify", files={"image": ("x.gif", gif.getvalue())})
    assert_problem(response, 422, "INVALID_INPUT")


def test_bad_base64_is_invalid_input(client: httpx.Client) -> None:
    response = client.post("/v1/classify", json={"image": "***not base64***"})
    assert_problem(response, 422, "INVALID_INPUT")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"instance": [1.0] * 63}, "shape [63]"),
        ({"instance": [[1.0] * 64]}, "shape [1, 64]"),
        ({"instance": ["a"] * 64}, "expects numbers"),
        ({"instance": [True] * 64}, "expects numbers"),
        ({"instances": [[1.0] * 64, [1.0] * 3]}, "ragged"),
        ({"instance": [1.0] * 64, "extra": 1}, "unknown fields ['extra']"),
        ({"instance": {"pixels": [1.0] * 64, "other": 1}}, "unknown fields ['other']"),
        ({"instances": []}, "non-empty"),
        ({"instance": [1.0] * 64, "instances": [[1.0] * 64]}, "exactly one"),
        ({"instance": [1.0] * 64, "parameters": {"top_k": 0}}, "top_k"),
        ({"instance": [1.0] * 64, "parameters": {"bogus": 1}}, "expected top_k, outputs"),
        ({"instance": [1.0] * 64, "parameters": {"outputs": ["nope"]}}, "unknown outputs"),
        ([1, 2, 3], "JSON object"),
    ],
)
def test_wrong_input_is_invalid_input(client: httpx.Client, body: object, fragment: str) -> None:
    response = client.post("/v1/models/digits/predict", json=body)
    detail = assert_problem(response, 422, "INVALID_INPUT")["detail"]
    assert fragment in str(detail)


@pytest.mark.parametrize(
    ("instance", "fragment"),
    [
        ([1.5, 2], "expects integers"),
        ([2**40, 1], "out of range for INT32"),
        (["1", "2"], "numbers"),
    ],
)
def test_integer_input_refuses_lossy_values(
    zoo: httpx.Client, instance: list[object], fragment: str
) -> None:
    response = zoo.post("/v1/models/int-sum/predict", json={"instance": instance})
    assert fragment in str(assert_problem(response, 422, "INVALID_INPUT")["detail"])
    ok = zoo.post("/v1/models/int-sum/predict", json={"instances": [[1, 2], [-3, 4]]})
    assert ok.json()["predictions"] == [{"total": 3}, {"total": 1}]


@pytest.mark.parametrize("top_k", ["²", "9" * 5000, "-1", "1.5", True])
def test_malformed_top_k_is_invalid_input(client: httpx.Client, top_k: object) -> None:
    body = {"instance": [0.0] * 64, "parameters": {"top_k": top_k}}
    assert_problem(client.post("/v1/models/digits/predict", json=body), 422, "INVALID_INPUT")
    if isinstance(top_k, str):
        form = client.post(
            "/v1/classify", files={"image": ("x.png", b"\x89PNG")}, data={"top_k": top_k}
        )
        assert_problem(form, 422, "INVALID_INPUT")


def test_a_tensor_the_onnx_graph_refuses_is_invalid_input(zoo: httpx.Client) -> None:
    """The signature says any number of features (-1); the graph wants 64. ONNX
    Runtime's refusal is the client's error, worded by us, not ORT."""
    response = zoo.post("/v1/models/loose-onnx/versions/2/predict", json={"instance": [1.0] * 3})
    detail = str(assert_problem(response, 422, "INVALID_INPUT")["detail"])
    assert "graph refused" in detail
    assert "ONNXRuntimeError" not in detail
    ok = zoo.post("/v1/models/loose-onnx/versions/2/predict", json={"instance": [1.0] * 64})
    assert ok.status_code == 200, ok.text


def test_malformed_json_is_invalid_input(client: httpx.Client) -> None:
    response = client.post(
        "/v1/models/digits/predict",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 422, "INVALID_INPUT")


def test_bad_headers_are_invalid_input(client: httpx.Client) -> None:
    body = {"instance": [0.0] * 64}
    detail = client.post(
        "/v1/models/digits/predict", json=body, headers={"X-Response-Detail": "loud"}
    )
    assert_problem(detail, 422, "INVALID_INPUT")
    for value in ("-5", "0", "soon", "300001", "9" * 40):
        timeout = client.post(
            "/v1/models/digits/predict", json=body, headers={"X-Request-Timeout-Ms": value}
        )
        assert_problem(timeout, 422, "INVALID_INPUT")


def test_unknown_model_and_version(client: httpx.Client) -> None:
    body = {"instance": [0.0] * 64}
    assert_problem(client.post("/v1/models/nope/predict", json=body), 404, "MODEL_NOT_FOUND")
    assert_problem(
        client.post("/v1/models/digits/versions/9/predict", json=body), 404, "VERSION_NOT_FOUND"
    )


def test_unknown_route_and_method(client: httpx.Client) -> None:
    assert_problem(client.get("/v9/nothing-here"), 404, "NOT_FOUND")
    v2 = client.get("/v2/nothing-here")  # the Open Inference Protocol's own error shape
    assert v2.status_code == 404
    assert v2.json() == {"error": "No such endpoint."}
    assert_problem(client.get("/v1/models/digits/predict"), 405, "METHOD_NOT_ALLOWED")


def test_unsupported_media_type(client: httpx.Client) -> None:
    response = client.post(
        "/v1/models/digits/predict", content=b"1,2,3", headers={"content-type": "text/csv"}
    )
    assert_problem(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    no_type = client.post("/v1/classify", content=b"\xff\xd8")
    assert_problem(no_type, 415, "UNSUPPORTED_MEDIA_TYPE")


def test_multipart_to_a_numeric_model_is_unsupported(client: httpx.Client) -> None:
    response = client.post("/v1/models/digits/predict", files={"pixels": ("x.bin", b"\x00" * 64)})
    assert_problem(response, 415, "UNSUPPORTED_MEDIA_TYPE")


def test_payload_too_large_by_content_length(zoo: httpx.Client) -> None:
    big = b'{"instance": [' + b"1," * 40_000 + b"1]}"
    response = zoo.post(
        "/v1/models/doubler/predict", content=big, headers={"content-type": "application/json"}
    )
    assert_problem(response, 413, "PAYLOAD_TOO_LARGE")


def test_payload_too_large_when_chunked(zoo: httpx.Client) -> None:
    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(100):
            yield b"1," * 1000

    response = zoo.post(
        "/v1/models/doubler/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_problem(response, 413, "PAYLOAD_TOO_LARGE")


def test_model_timeout(zoo: httpx.Client) -> None:
    response = zoo.post("/v1/models/slow/predict", json={"instance": [1, 2]})
    body = assert_problem(response, 504, "INFERENCE_TIMEOUT")
    assert "within 300 ms" in str(body["detail"])  # the model's timeout_ms, not its 1.5 s


def test_request_deadline_header(zoo: httpx.Client) -> None:
    response = zoo.post(
        "/v1/models/held/predict",
        json={"instance": [1, 2]},
        headers={"X-Request-Timeout-Ms": "100"},
    )
    body = assert_problem(response, 504, "INFERENCE_TIMEOUT")
    assert "100 ms" in str(body["detail"])


def test_request_queued_past_its_deadline_is_dropped_not_run(
    zoo: httpx.Client, zoo_server: RunningServer
) -> None:
    before = zoo.get("/v1/models/queued").json()["version_details"][0]["stats"]
    first: dict[str, httpx.Response] = {}

    def occupy() -> None:
        with httpx.Client(base_url=zoo_server.url, timeout=10) as other:
            first["r"] = other.post("/v1/models/queued/predict", json={"instance": [1, 2]})

    runner = threading.Thread(target=occupy)
    runner.start()
    time.sleep(0.15)  # the first request is now running for 600 ms
    second = zoo.post(
        "/v1/models/queued/predict",
        json={"instance": [3, 4]},
        headers={"X-Request-Timeout-Ms": "100"},
    )
    assert_problem(second, 504, "INFERENCE_TIMEOUT")
    runner.join(timeout=10)
    assert first["r"].status_code == 200
    # Wait for the batcher to reach the abandoned request, then check it never ran.
    for _ in range(100):
        after = zoo.get("/v1/models/queued").json()["version_details"][0]["stats"]
        if after["dropped_expired"] > before["dropped_expired"]:
            break
        time.sleep(0.02)
    assert after["dropped_expired"] == before["dropped_expired"] + 1
    assert after["inference_count"] == before["inference_count"] + 1


def test_flood_beyond_the_queue_bound_is_shed(zoo_server: RunningServer) -> None:
    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=zoo_server.url, timeout=30) as http:
            return await asyncio.gather(
                *(
                    http.post("/v1/models/tiny-queue/predict", json={"instance": [i, i]})
                    for i in range(12)
                )
            )

    responses = asyncio.run(flood())
    statuses = sorted(r.status_code for r in responses)
    shed = [r for r in responses if r.status_code == 503]
    assert set(statuses) == {200, 503}
    assert len(shed) >= 8  # queue of 2 + 1 running; the rest fail fast
    for response in shed:
        assert_problem(response, 503, "RESOURCE_EXHAUSTED")
        assert int(response.headers["Retry-After"]) >= 1


def test_failing_model_is_internal_without_details(zoo: httpx.Client) -> None:
    response = zoo.post("/v1/models/crashes/predict", json={"instances": [[1, 2], [3, 4]]})
    body = assert_problem(response, 500, "INTERNAL")
    text = response.text
    for leak in ("secret", "Traceback", "/srv"):
        assert leak not in text
    assert "crashes" in str(body["detail"])


def test_request_id_is_echoed_on_errors_and_success(client: httpx.Client) -> None:
    ok = client.post(
        "/v1/models/digits/predict",
        json={"instance": [0.0] * 64},
        headers={"X-Request-ID": "abc-123"},
    )
    assert ok.headers["X-Request-ID"] == "abc-123"
    assert ok.json()["id"] == "abc-123"
    bad = client.post("/v1/models/nope/predict", json={}, headers={"X-Request-ID": "abc-124"})
    assert bad.json()["request_id"] == "abc-124"
    # An id that could inject headers or logs is replaced, not echoed.
    odd = client.get("/healthz", headers={"X-Request-ID": "a b\tc"})
    assert odd.headers["X-Request-ID"] != "a b\tc"
    assert len(odd.headers["X-Request-ID"]) == 32

"""Hostile image requests over a real socket: bounded work, stopped work, and the
server keeps serving.

The server has one pre-processing thread, so work a request leaves behind
would hold up the next one; a probe counts the images the server actually
decodes, which is how the tests see that work stopped (no timed assertions).
"""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from modelplex.core.preprocessing import ImagePreprocessor
from modelplex.core.tensors import Array
from modelplex.server import RunningServer, start
from tests.api.test_errors import assert_problem
from tests.conftest import settings_for, wait_ready
from tests.gates import GATES
from tests.helpers import copy_model, write_model

GATED_IMAGES_TOML = """
runtime = "python"
[[inputs]]
name = "image"
datatype = "BYTES"
shape = []
[[outputs]]
name = "y"
datatype = "FP32"
shape = [1]
[preprocessing]
kind = "image"
input = "image"
output = "pixels"
size = 8
[batching]
max_batch_size = 1
max_batch_delay_ms = 0
max_queue_size = 8
[python]
options = { gate = "gated-images" }
"""
GATED_IMAGES_CODE = """
from tests.gates import GATES


class Model:
    def __init__(self, gate):
        self.gate = gate

    def predict(self, batch):
        gate = GATES[self.gate]
        gate.calls.append(len(batch["pixels"]))
        gate.entered.set()
        gate.open.wait(30)
        return {"y": batch["pixels"].mean(axis=(1, 2, 3))[:, None]}
"""
PREDICT = "/v1/models/image-classifier/predict"
IMAGES = 64
"""Moderately big images in one request: 64 x 1.5 MP stays under the default
`max_request_pixels` (100 MP), so only the deadline or the client can stop it."""


class DecodeProbe:
    """Counts the images the server has decoded (any thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def seen(self) -> None:
        with self._lock:
            self.count += 1


@pytest.fixture(scope="module")
def server(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("hostile-images-repo")
    copy_model(example_repo, "image-classifier", repo)
    write_model(repo, "gated-images", GATED_IMAGES_TOML, GATED_IMAGES_CODE)
    settings = settings_for(tmp_path_factory.mktemp("hostile-images"), preprocess_threads=1)
    with start(settings, repo) as running:
        yield running


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> DecodeProbe:
    probe = DecodeProbe()
    crop_resize = ImagePreprocessor._crop_resize

    def counted(self: ImagePreprocessor, image: Image.Image) -> Array:
        probe.seen()
        return crop_resize(self, image)

    monkeypatch.setattr(ImagePreprocessor, "_crop_resize", counted)
    return probe


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    """A single-colour PNG: tiny on the wire, `width x height` pixels decoded."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 90).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png(6400, 6250, "L")  # exactly `max_image_pixels` (40 MP): legal on its own


@pytest.fixture(scope="module")
def moderate() -> bytes:
    return png(1500, 1000)


def files(data: bytes, count: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (f"{i}.png", data, "image/png")) for i in range(count)]


def assert_classifies(http: httpx.Client, photos: dict[str, bytes]) -> None:
    response = http.post("/v1/classify", files={"image": ("c.png", photos["coffee.png"])})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["class_id"] == 967


def assert_work_stopped(http: httpx.Client, photos: dict[str, bytes], probe: DecodeProbe) -> None:
    """The abandoned request decoded only some of its images, and none after: the
    ordinary requests that follow (behind it on the one pre-processing thread)
    each add exactly their own image."""
    assert_classifies(http, photos)
    abandoned = probe.count - 1
    assert 0 <= abandoned < IMAGES
    assert_classifies(http, photos)
    assert probe.count == abandoned + 2


def test_many_small_files_decoding_to_huge_images_are_refused_before_decoding(
    http: httpx.Client, photos: dict[str, bytes], bomb: bytes, decoded: DecodeProbe
) -> None:
    assert 128 * len(bomb) < 8 * 1024 * 1024  # a modest body: the danger is the pixels
    response = http.post(PREDICT, files=files(bomb, 128))
    body = assert_problem(response, 413, "PAYLOAD_TOO_LARGE")
    assert "5120000000 pixels" in str(body["detail"])
    assert decoded.count == 0  # refused from the headers alone
    assert_classifies(http, photos)


def test_pixel_limit_applies_to_json_and_v2_bodies_too(
    server: RunningServer, http: httpx.Client, photos: dict[str, bytes], bomb: bytes
) -> None:
    encoded = base64.b64encode(bomb).decode()
    response = http.post(PREDICT, json={"instances": [{"b64": encoded}] * 3})
    assert_problem(response, 413, "PAYLOAD_TOO_LARGE")
    tensor = triton.InferInput("image", [3], "BYTES")
    tensor.set_data_from_numpy(np.array([bomb] * 3, dtype=object))
    with pytest.raises(InferenceServerException) as raised:
        triton.InferenceServerClient(urlsplit(server.url).netloc).infer(
            "image-classifier", [tensor]
        )
    assert raised.value.status() == "413"
    assert_classifies(http, photos)


def test_timed_out_request_stops_decoding_and_the_next_request_is_served(
    http: httpx.Client, photos: dict[str, bytes], moderate: bytes, decoded: DecodeProbe
) -> None:
    response = http.post(
        PREDICT, files=files(moderate, IMAGES), headers={"X-Request-Timeout-Ms": "100"}
    )
    assert_problem(response, 504, "INFERENCE_TIMEOUT")
    assert_work_stopped(http, photos, decoded)


def _raw(url: str, request: httpx.Request) -> socket.socket:
    """`request` sent on a raw socket, so the test decides when the client hangs up."""
    parts = urlsplit(url)
    head = [f"{request.method} {request.url.raw_path.decode()} HTTP/1.1", f"Host: {parts.netloc}"]
    head += [f"{k}: {v}" for k, v in request.headers.items() if k.lower() != "host"]
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + request.read())
    return sock


def _until(condition: Callable[[], bool]) -> bool:
    for _ in range(3000):  # bounded: about 30 s
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_client_that_hangs_up_stops_its_decoding(
    server: RunningServer,
    http: httpx.Client,
    photos: dict[str, bytes],
    moderate: bytes,
    decoded: DecodeProbe,
) -> None:
    request = httpx.Request("POST", server.url + PREDICT, files=files(moderate, IMAGES))
    with _raw(server.url, request):
        assert _until(lambda: decoded.count > 0), "the server never began decoding"
    assert_work_stopped(http, photos, decoded)


def test_client_that_hangs_up_while_queued_is_dropped_from_the_batch_queue(
    server: RunningServer, http: httpx.Client
) -> None:
    gate = GATES["gated-images"]
    gate.calls.clear()
    gate.open.clear()
    gate.entered.clear()
    batcher = server.modelplex.dataplane.registry.get("gated-images").batcher
    small = png(16, 16)
    url = "/v1/models/gated-images/predict"
    first: dict[str, httpx.Response] = {}

    def occupy() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as other:
            first["r"] = other.post(url, files=files(small, 1))

    runner = threading.Thread(target=occupy)
    try:
        runner.start()
        assert gate.entered.wait(30)  # the first request holds the model
        request = httpx.Request("POST", server.url + url, files=files(small, 1))
        with _raw(server.url, request):
            assert _until(lambda: batcher.queued_rows == 1)  # queued behind the first
        assert _until(lambda: batcher.queued_rows == 0)  # the hang-up frees its place
    finally:
        gate.open.set()
        runner.join(timeout=30)
    assert first["r"].status_code == 200, first["r"].text
    third = http.post(url, files=files(small, 1))
    assert third.status_code == 200, third.text
    assert gate.calls == [1, 1]  # the abandoned request never ran

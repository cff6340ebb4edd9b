"""The heaviest legal request of each route, and threads that send it in a loop.

Sizes start at the server's limits (`Settings`) and are halved while the server
refuses them (any answer but 200, any gRPC error: a body limit, an element
limit or a queue of rows too short for the request), then bisected, so each
attack sends about the largest request the server accepts, whatever limits it
has at the time. Each `Attack` runs its request in `streams` threads (one by
default: one client looping) until stopped, and counts the answers by status.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import numpy as np
import skimage.data
from PIL import Image

from benchmarks.album import album
from benchmarks.peer_models import row
from benchmarks.protocols import GRPC_PATH, bytes_element, grpc_request, v2_binary

Send = Callable[[httpx.Client, threading.Event], str]
"""Sends one request (or runs one job to its end) and returns its status as text."""


@dataclass
class Attack:
    name: str
    size: str  # what was sent, for the report
    send: Send
    streams: int = 1
    statuses: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, url: str) -> None:
        for _ in range(self.streams):
            thread = threading.Thread(target=self._loop, args=(url,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _loop(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while not self._stop.is_set():
                try:
                    self.statuses[self.send(client, self._stop)] += 1
                except (httpx.HTTPError, grpc.RpcError) as error:
                    self.statuses[type(error).__name__] += 1

    def stop(self, wait_s: float = 30) -> None:
        self._stop.set()
        deadline = time.monotonic() + wait_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _largest(
    build: Callable[[int], Any], accepted: Callable[[Any], bool], start: int, refine: int = 5
) -> tuple[int, Any]:
    """The largest n accepted: halving from `start`, then `refine` bisection steps
    between the first accepted n and the refused 2n."""
    n = start
    while n > 1:
        request = build(n)
        if accepted(request):
            break
        n //= 2
    else:
        return 1, build(1)
    low, high = n, min(start + 1, 2 * n)
    for _ in range(refine):
        middle = (low + high) // 2
        if middle == low:
            break
        candidate = build(middle)
        if accepted(candidate):
            low, request = middle, candidate
        else:
            high = middle
    return low, request


def json_predict(url: str, max_bytes: int) -> Attack:
    values = row().tolist()
    per_row = len(json.dumps(values)) + 2
    path = "/v1/models/digits/predict"

    def build(n: int) -> bytes:
        return json.dumps({"instances": [values] * n}).encode()

    def accepted(body: bytes) -> bool:
        answer = httpx.post(url + path, content=body, headers=_JSON, timeout=120)
        return answer.status_code == 200

    n, body = _largest(build, accepted, int(max_bytes * 0.95) // per_row)

    def send(client: httpx.Client, stop: threading.Event) -> str:
        return str(client.post(path, content=body, headers=_JSON).status_code)

    return Attack("largest JSON predict", f"{n:,} instances, {len(body) / 2**20:.1f} MiB", send)


def image_batch(url: str, start: int, side: int) -> Attack:
    cat = skimage.data.chelsea()  # type: ignore[no-untyped-call]
    photo = Image.fromarray(cat).convert("RGB").resize((side, side))
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    jpeg = bytes_element(buffer.getvalue())
    path = "/v2/models/image-classifier/infer"

    def build(n: int) -> tuple[bytes, dict[str, str]]:
        body, header = v2_binary("image", "BYTES", [n], jpeg * n)
        return body, {"Content-Type": "application/octet-stream",
                      "Inference-Header-Content-Length": str(header)}  # fmt: skip

    def accepted(request: tuple[bytes, dict[str, str]]) -> bool:
        answer = httpx.post(url + path, content=request[0], headers=request[1], timeout=300)
        return answer.status_code == 200

    n, (body, headers) = _largest(build, accepted, start)

    def send(client: httpx.Client, stop: threading.Event) -> str:
        return str(client.post(path, content=body, headers=headers).status_code)

    size = f"{n} JPEG images of {side}x{side} ({len(body) / 2**20:.1f} MiB)"
    return Attack("image batch classify (V2 BYTES)", size, send)


def album_job(images: int, side: int) -> Attack:
    archive = album(images, side)

    def send(client: httpx.Client, stop: threading.Event) -> str:
        answer = client.post(
            "/v1/jobs", data={"pipeline": "album-tagging"},
            files={"file": ("album.zip", archive, "application/zip")},
        )  # fmt: skip
        if answer.status_code != 202:
            return str(answer.status_code)
        job = answer.json()["id"]
        while not stop.wait(0.5):
            status = str(client.get(f"/v1/jobs/{job}").json()["status"])
            if status in ("COMPLETED", "FAILED", "CANCELLED"):
                return status
        client.post(f"/v1/jobs/{job}/cancel")
        return "cut off"

    size = f"zip of {images} JPEG photos, {side} px long side ({len(archive) / 2**20:.1f} MiB)"
    return Attack("album zip job", size, send)


def batch_file(lines: int) -> Attack:
    values = row().tolist()
    content = "".join(
        json.dumps({"custom_id": f"line-{i}", "input": {"instance": values}}) + "\n"
        for i in range(lines)
    ).encode()

    def send(client: httpx.Client, stop: threading.Event) -> str:
        answer = client.post(
            "/v1/batches", params={"model": "digits"}, content=content,
            headers={"Content-Type": "application/jsonl"},
        )  # fmt: skip
        if answer.status_code != 202:
            return str(answer.status_code)
        batch = answer.json()["id"]
        while not stop.wait(0.5):
            if client.get(f"/v1/batches/{batch}").json()["status"] != "PROCESSING":
                return "finished"
        client.post(f"/v1/batches/{batch}/cancel")
        return "cut off"

    size = f"{lines:,} lines on digits ({len(content) / 2**20:.1f} MiB)"
    return Attack("batch file", size, send)


def grpc_tensor(target: str, max_bytes: int) -> Attack:
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    channel = grpc.insecure_channel(target, options=options)
    infer = channel.unary_unary(GRPC_PATH)
    features = row()

    def build(n: int) -> bytes:
        raw = np.tile(features, (n, 1)).tobytes()
        return grpc_request("digits", "pixels", "FP32", [n, 64], raw)

    def accepted(request: bytes) -> bool:
        try:
            infer(request, timeout=120)
        except grpc.RpcError:
            return False
        return True

    n, request = _largest(build, accepted, int(max_bytes * 0.95) // (64 * 4))

    def send(client: httpx.Client, stop: threading.Event) -> str:
        try:
            infer(request, timeout=120)
        except grpc.RpcError as error:
            return str(error.code())
        return "OK"

    return Attack("big gRPC tensor", f"FP32 [{n:,}, 64] ({len(request) / 2**20:.1f} MiB)", send)


_JSON = {"Content-Type": "application/json"}

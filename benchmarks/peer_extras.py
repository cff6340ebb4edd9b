"""The two modelplex-only parts of `benchmarks.peers`: idle cost and image classification.

* Idle: `modelplex serve` with defaults (embedded job worker) on the example
  repository; after it is ready and has settled, the CPU its process tree uses
  over an idle window, and the tree's total RSS.
* image-classifier: `POST /v1/classify` of one 224x224 JPEG at c=32, against
  the model's own in-process batch-32 loop (ONNX Runtime, as benchmarks.serving
  measures it) run in this process: CPU per image from process_time, images/s.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.harness import Point, Server, cpu_seconds, free_port, measure, rss_bytes, wrk
from benchmarks.serving import write_bodies


def start_example_server(folder: Path, repo: Path) -> Server:
    port, grpc_port = free_port(), free_port()
    return Server(
        "modelplex",
        [sys.executable, "-m", "modelplex", "serve", "--port", str(port),
         "--model-repository", str(repo)],
        f"http://127.0.0.1:{port}", "/readyz",
        {"MODELPLEX_GRPC_PORT": str(grpc_port), "MODELPLEX_DATA_DIR": str(folder / "idle-data")},
        log=folder / "modelplex-example.log",
    )  # fmt: skip


def idle(server: Server, settle_s: float, window_s: float) -> dict[str, Any]:
    time.sleep(settle_s)
    pids = server.pids()
    before, start = cpu_seconds(pids), time.monotonic()
    time.sleep(window_s)
    cores = (cpu_seconds(pids) - before) / (time.monotonic() - start)
    return {
        "settle_s": settle_s,
        "window_s": window_s,
        "cores": cores,
        "rss_mb": rss_bytes(server.pids()) / 2**20,
        "processes": len(server.pids()),
    }


def in_process_batch32(repo: Path, seconds: float) -> dict[str, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    session = ort.InferenceSession(str(repo / "image-classifier" / "1" / "model.onnx"), options)
    pixels = np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32)
    for _ in range(2):
        session.run(None, {"input": pixels})
    calls, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - wall0 < seconds:
        session.run(None, {"input": pixels})
        calls += 1
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"images_per_s": calls * 32 / wall, "cpu_us_per_image": cpu / (calls * 32) * 1e6}


def classify(server: Server, folder: Path, warmup: float, seconds: float) -> Point:
    _, image_body, image_type = write_bodies(folder)
    load = wrk(server.url + "/v1/classify", image_body, image_type)
    # A batch of 32 takes about a second here: shorter windows would hold a handful.
    return measure(
        server, "image classify", load, 32, warmup_s=max(warmup, 3), seconds=max(seconds, 10)
    )

"""Synchronous serving benchmark: modelplex against its references, in one run.

    .venv/bin/python -m benchmarks.serving [--seconds 10] [--warmup 3]

Needs `wrk` (Debian package `wrk`). Loads, in alternation per concurrency:
* modelplex `POST /v1/models/digits/predict` (JSON, one instance),
* a hand-written FastAPI endpoint with the same trained digits pipeline
  (joblib, `predict_proba` per request),
* a no-op FastAPI endpoint with the same body (the HTTP floor),
then modelplex `POST /v1/classify` with a 224x224 JPEG (multipart), and
measures the models' own in-process predict loops before and after.
Prints a markdown table and writes JSON next to this file in results/.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnxruntime as ort
import skimage.data
from PIL import Image
from sklearn.datasets import load_digits

import modelplex
from benchmarks.harness import Point, Server, free_port, measure, wrk
from modelplex.core.model_config import load_model_config
from modelplex.core.preprocessing import ImagePreprocessor
from modelplex.examples import ensure_example_repository
from modelplex.settings import default_cache_dir

CONCURRENCY = (1, 16, 64)
IMAGE_CONCURRENCY = (1, 16, 32, 64)
RESULTS = Path(__file__).resolve().parent / "results"


def loop_rate(fn: Any, rows: int, seconds: float = 3.0) -> float:
    """Rows per second of `fn` called back to back (after a short warm-up)."""
    for _ in range(3):
        fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls * rows / (time.perf_counter() - start)


def in_process(repo: Path) -> dict[str, float]:
    features = load_digits(return_X_y=True)[0].astype(np.float32)
    threads = os.cpu_count() or 1
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    digits = ort.InferenceSession(str(repo / "digits" / "2" / "model.onnx"), options)
    pipeline = joblib.load(repo / "digits" / "1" / "model.joblib")
    image = ort.InferenceSession(str(repo / "image-classifier" / "1" / "model.onnx"), options)
    pixels = np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32)
    config = load_model_config(repo / "image-classifier" / "model.toml")
    assert config.preprocessing is not None
    preprocess = ImagePreprocessor(config.preprocessing, 40_000_000)
    jpeg = np.empty(1, dtype=object)
    jpeg[0] = jpeg_224()
    return {
        "digits_onnx_b1": loop_rate(lambda: digits.run(None, {"pixels": features[:1]}), 1),
        "digits_onnx_b16": loop_rate(lambda: digits.run(None, {"pixels": features[:16]}), 16),
        "digits_sklearn_b1": loop_rate(lambda: pipeline.predict_proba(features[:1]), 1),
        "digits_sklearn_b16": loop_rate(lambda: pipeline.predict_proba(features[:16]), 16),
        "image_b1": loop_rate(lambda: image.run(None, {"input": pixels[:1]}), 1),
        "image_b16": loop_rate(lambda: image.run(None, {"input": pixels[:16]}), 16),
        "image_b32": loop_rate(lambda: image.run(None, {"input": pixels}), 32),
        "image_preprocess_1thread": loop_rate(lambda: preprocess({"image": jpeg}), 1),
    }


def jpeg_224() -> bytes:
    buffer = io.BytesIO()
    cat = skimage.data.chelsea()  # type: ignore[no-untyped-call]
    Image.fromarray(cat).resize((224, 224)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_bodies(workdir: Path) -> tuple[Path, Path, str]:
    features = load_digits(return_X_y=True)[0]
    digits_body = workdir / "digits.json"
    digits_body.write_text(json.dumps({"instance": features[1500].tolist()}))
    boundary = "modelplexbenchboundary"
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="cat.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + jpeg_224()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    image_body = workdir / "image.multipart"
    image_body.write_bytes(multipart)
    return digits_body, image_body, f"multipart/form-data; boundary={boundary}"


def start_servers(repo: Path) -> dict[str, Server]:
    python = sys.executable
    servers: dict[str, Server] = {}
    port = free_port()
    servers["modelplex"] = Server(
        "modelplex",
        [python, "-m", "modelplex", "serve", "--port", str(port), "--model-repository", str(repo)],
        f"http://127.0.0.1:{port}",
        "/readyz",
        {"MODELPLEX_DATA_DIR": str(RESULTS / "data")},
    )
    for name, app in (("handwritten", "handwritten"), ("noop", "noop")):
        port = free_port()
        servers[name] = Server(
            name,
            [
                python,
                "-m",
                "uvicorn",
                f"benchmarks.reference_apps:{app}",
                "--port",
                str(port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            f"http://127.0.0.1:{port}",
            "/docs",
            {"MODELPLEX_BENCH_JOBLIB": str(repo / "digits" / "1" / "model.joblib")},
        )
    return servers


def table(points: list[Point]) -> str:
    lines = [
        "| server | workload | c | req/s | p50 ms | p99 ms | errors | server CPU us/req "
        "| server cores | peak RSS MB | foreign cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {p.server} | {p.workload} | {p.concurrency} | {p.rps:,.0f} | {p.p50_ms:.2f} "
            f"| {p.p99_ms:.2f} | {p.errors} | {p.server_cpu_us_per_req:.0f} | {p.server_cores:.2f} "
            f"| {p.peak_rss_mb:.0f} | {p.foreign_cores:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    args = parser.parse_args()

    RESULTS.mkdir(exist_ok=True)
    repo = ensure_example_repository(default_cache_dir())
    digits_body, image_body, image_type = write_bodies(RESULTS)
    print("in-process loops (before) ...", flush=True)
    before = in_process(repo)
    servers = start_servers(repo)
    points: list[Point] = []
    try:
        for c in CONCURRENCY:
            for name in ("modelplex", "handwritten", "noop"):
                path = "/v1/models/digits/predict" if name == "modelplex" else "/predict"
                load = wrk(servers[name].url + path, digits_body, "application/json")
                point = measure(
                    servers[name],
                    "digits JSON",
                    load,
                    c,
                    warmup_s=args.warmup,
                    seconds=args.seconds,
                )
                print(f"  {name:12} c={c:<3} {point.rps:8,.0f} req/s", flush=True)
                points.append(point)
        for name in ("handwritten", "noop"):
            servers.pop(name).stop()
        for c in IMAGE_CONCURRENCY:
            load = wrk(servers["modelplex"].url + "/v1/classify", image_body, image_type)
            point = measure(
                servers["modelplex"], "classify JPEG 224", load, c,
                warmup_s=args.warmup, seconds=args.seconds,
            )  # fmt: skip
            print(f"  classify     c={c:<3} {point.rps:8,.0f} req/s", flush=True)
            points.append(point)
    finally:
        for server in servers.values():
            server.stop()
    print("in-process loops (after) ...", flush=True)
    after = in_process(repo)

    loops = {k: (before[k] + after[k]) / 2 for k in before}
    by = {(p.server, p.workload, p.concurrency): p for p in points}
    mp64 = by[("modelplex", "digits JSON", 64)].rps
    ratios = {
        "digits c64 / handwritten c64": mp64 / by[("handwritten", "digits JSON", 64)].rps,
        "digits c64 / noop c64": mp64 / by[("noop", "digits JSON", 64)].rps,
        "classify c32 / in-process batch-32 images/s": by[
            ("modelplex", "classify JPEG 224", 32)
        ].rps
        / loops["image_b32"],
    }
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": {"modelplex": modelplex.__version__, "onnxruntime": ort.__version__},
        "in_process_rows_per_s": {"before": before, "after": after},
        "points": [p.as_dict() for p in points],
        "ratios": ratios,
    }
    out = RESULTS / f"serving-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2))
    print()
    print(table(points))
    print()
    print("in-process (rows/s, mean of before and after):")
    for key, value in loops.items():
        print(f"  {key:28} {value:10,.0f}   (before {before[key]:,.0f}, after {after[key]:,.0f})")
    print()
    for key, value in ratios.items():
        print(f"  {key:46} {value:.2f}")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()

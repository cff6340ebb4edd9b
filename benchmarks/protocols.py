"""The same models over /v1, the Open Inference Protocol's REST (JSON and binary) and gRPC.

    .venv/bin/python -m benchmarks.protocols [--seconds 10] [--warmup 3]

One `modelplex serve` (gRPC on), the example models. REST is loaded by wrk
(HTTP/1.1), gRPC by h2load (HTTP/2, Debian package nghttp2-client), both C load
generators, one request in flight per connection, concurrency 1, 16 and 64:
* digits, one 64-pixel row: /v1 JSON, V2 JSON, V2 binary tensors, gRPC (raw
  little-endian contents);
* image-classifier, one 224x224 JPEG: /v1 multipart, V2 binary BYTES, gRPC.
Before measuring, one request of each kind is checked for a correct answer
(h2load cannot read gRPC's status trailer).
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import skimage.data
from PIL import Image
from sklearn.datasets import load_digits
from tritonclient.grpc import service_pb2, service_pb2_grpc

from benchmarks.harness import Load, Point, Server, free_port, h2load, measure, wrk
from benchmarks.serving import table
from modelplex.examples import ensure_example_repository
from modelplex.settings import default_cache_dir

CONCURRENCY = (1, 16, 64)
RESULTS = Path(__file__).resolve().parent / "results"
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"


def jpeg_224() -> bytes:
    buffer = io.BytesIO()
    cat = skimage.data.chelsea()  # type: ignore[no-untyped-call]
    Image.fromarray(cat).resize((224, 224)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def grpc_request(model: str, name: str, datatype: str, shape: list[int], raw: bytes) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.append(raw)
    return bytes(request.SerializeToString())


def grpc_frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: not compressed, 4-byte big-endian length."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def v2_binary(name: str, datatype: str, shape: list[int], raw: bytes) -> tuple[bytes, int]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + raw, len(header)


def bytes_element(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def workloads(root: Path, rest: str, grpc_url: str) -> dict[str, tuple[str, Load]]:
    """name -> (model, load)"""
    row = load_digits(return_X_y=True)[0][1500].astype(np.float32)
    image = jpeg_224()
    files: dict[str, Path] = {}

    def file(name: str, content: bytes) -> Path:
        files[name] = root / name
        files[name].write_bytes(content)
        return files[name]

    v1_digits = file("v1-digits.json", json.dumps({"instance": row.tolist()}).encode())
    v2_digits = file(
        "v2-digits.json",
        json.dumps(
            {
                "inputs": [
                    {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": row.tolist()}
                ]
            }
        ).encode(),
    )
    v2_digits_bin, digits_len = v2_binary("pixels", "FP32", [1, 64], row.tobytes())
    v2_image_bin, image_len = v2_binary("image", "BYTES", [1], bytes_element(image))
    boundary = "modelplexbenchboundary"
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="cat.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    grpc_headers = ["content-type: application/grpc", "te: trailers"]
    grpc_digits = grpc_request("digits", "pixels", "FP32", [1, 64], row.tobytes())
    grpc_image = grpc_request("image-classifier", "image", "BYTES", [1], bytes_element(image))
    json_type = "application/json"
    return {
        "digits /v1 JSON": (
            "digits", wrk(f"{rest}/v1/models/digits/predict", v1_digits, json_type)
        ),
        "digits V2 JSON": ("digits", wrk(f"{rest}/v2/models/digits/infer", v2_digits, json_type)),
        "digits V2 binary": ("digits", wrk(
            f"{rest}/v2/models/digits/infer", file("v2-digits.bin", v2_digits_bin),
            "application/octet-stream", f"Inference-Header-Content-Length: {digits_len}",
        )),
        "digits gRPC": ("digits", h2load(
            f"{grpc_url}{GRPC_PATH}",
            file("grpc-digits.bin", grpc_frame(grpc_digits)),
            grpc_headers,
        )),
        "image /v1 multipart": ("image-classifier", wrk(
            f"{rest}/v1/classify", file("v1-image.multipart", multipart),
            f"multipart/form-data; boundary={boundary}",
        )),
        "image V2 binary": ("image-classifier", wrk(
            f"{rest}/v2/models/image-classifier/infer", file("v2-image.bin", v2_image_bin),
            "application/octet-stream", f"Inference-Header-Content-Length: {image_len}",
        )),
        "image gRPC": ("image-classifier", h2load(
            f"{grpc_url}{GRPC_PATH}",
            file("grpc-image.bin", grpc_frame(grpc_image)),
            grpc_headers,
        )),
    }  # fmt: skip


def check_answers(grpc_address: str) -> None:
    """One correct gRPC answer per model before h2load, which cannot see gRPC errors."""
    row = load_digits(return_X_y=True)[0][1500].astype(np.float32)
    with grpc.insecure_channel(grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for model, name, datatype, shape, raw in (
            ("digits", "pixels", "FP32", [1, 64], row.tobytes()),
            ("image-classifier", "image", "BYTES", [1], bytes_element(jpeg_224())),
        ):
            request = service_pb2.ModelInferRequest()
            request.ParseFromString(grpc_request(model, name, datatype, shape, raw))
            response = stub.ModelInfer(request, timeout=30)
            if not response.outputs:
                raise RuntimeError(f"no answer from {model} over gRPC")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=3)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    repo = ensure_example_repository(default_cache_dir())
    http_port, grpc_port = free_port(), free_port()
    server = Server(
        "modelplex",
        [sys.executable, "-m", "modelplex", "serve", "--port", str(http_port),
         "--model-repository", str(repo)],
        f"http://127.0.0.1:{http_port}",
        "/readyz",
        {"MODELPLEX_GRPC_PORT": str(grpc_port), "MODELPLEX_WORKERS": "0",
         "MODELPLEX_DATA_DIR": str(RESULTS / "data-protocols")},
    )  # fmt: skip
    points: list[Point] = []
    try:
        check_answers(f"127.0.0.1:{grpc_port}")
        with tempfile.TemporaryDirectory() as tmp:
            loads = workloads(Path(tmp), server.url, f"http://127.0.0.1:{grpc_port}")
            for c in CONCURRENCY:
                for name, (_, load) in loads.items():
                    point = measure(
                        server, name, load, c, warmup_s=args.warmup, seconds=args.seconds
                    )
                    print(
                        f"  {name:22} c={c:<3} {point.rps:8,.0f} req/s  p99 {point.p99_ms:7.2f} ms",
                        flush=True,
                    )
                    points.append(point)
    finally:
        server.stop()
    out = RESULTS / f"protocols-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps([p.as_dict() for p in points], indent=2))
    print()
    print(table(points))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()

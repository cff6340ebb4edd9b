"""How long the album-tagging pipeline takes, step by step.

    .venv/bin/python -m benchmarks.album [--images 300] [--side 1600]

Serves the example repository with one embedded worker, submits an album of
`--images` JPEG photos (scikit-image's sample photos, resized to `--side`
pixels on the long edge, as a zip upload) and reports the job's wall time and
each step's time from the job record.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime

import httpx
import skimage.data
from PIL import Image

from benchmarks.harness import free_port
from modelplex.examples import ensure_example_repository
from modelplex.settings import default_cache_dir

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "cat", "hubble_deep_field")


def album(count: int, side: int) -> bytes:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zipped:
        for i in range(count):
            image = Image.fromarray(getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()).convert("RGB")
            scale = side / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            zipped.writestr(f"album/{i:04d}.jpg", buffer.getvalue())
    return archive.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--side", type=int, default=1600)
    args = parser.parse_args()
    repo = ensure_example_repository(default_cache_dir())
    payload = album(args.images, args.side)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "modelplex", "serve", "--port", str(port),
             "--model-repository", str(repo)],
            env={**os.environ, "MODELPLEX_DATA_DIR": tmp, "MODELPLEX_WORKERS": "1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start")
                time.sleep(0.2)
            time.sleep(5)  # the worker loads its models
            started = time.perf_counter()
            job = httpx.post(
                url + "/v1/jobs",
                data={"pipeline": "album-tagging"},
                files={"file": ("album.zip", payload, "application/zip")},
                timeout=120,
            ).json()
            while job["status"] not in ("COMPLETED", "FAILED", "CANCELLED"):
                time.sleep(0.2)
                job = httpx.get(f"{url}/v1/jobs/{job['id']}").json()
            wall = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(timeout=60)
    steps = {
        s["name"]: round(
            (datetime.fromisoformat(s["finished_at"]) - datetime.fromisoformat(s["started_at"]))
            .total_seconds(), 2,
        )
        for s in job["steps"]
        if s["started_at"] and s["finished_at"]
    }  # fmt: skip
    report = {
        "images": args.images,
        "long_side_px": args.side,
        "zip_mb": round(len(payload) / 2**20, 1),
        "status": job["status"],
        "wall_s": round(wall, 2),
        "images_per_s": round(args.images / wall, 1),
        "steps_s": steps,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

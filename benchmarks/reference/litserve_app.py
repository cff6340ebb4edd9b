"""A joblib model served by LitServe, with or without its batching.

    BENCH_JOBLIB=lr.joblib BENCH_PORT=8000 BENCH_BATCH=64 BENCH_WORKERS=1 python litserve_app.py

BENCH_BATCH=1 serves one request per `predict`; above 1 LitServe gathers up to
that many requests (waiting at most BENCH_BATCH_TIMEOUT seconds) into one call.
"""

import os
from typing import Any

import joblib
import litserve as ls  # type: ignore[import-not-found]  # installed in its own venv only
import numpy as np


class JoblibAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.model = joblib.load(os.environ["BENCH_JOBLIB"])

    def decode_request(self, request: dict[str, Any]) -> np.ndarray:
        return np.asarray(request["instance"], dtype=np.float32)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> Any:
        return self.model.predict(x if x.ndim == 2 else x[None, :])

    def unbatch(self, output: Any) -> list[Any]:
        return list(output)

    def encode_response(self, output: Any) -> dict[str, int]:
        return {"label": int(output if np.ndim(output) == 0 else output[0])}


if __name__ == "__main__":
    batch = int(os.environ.get("BENCH_BATCH", "1"))
    api = JoblibAPI(
        max_batch_size=batch, batch_timeout=float(os.environ.get("BENCH_BATCH_TIMEOUT", "0.002"))
    )
    server = ls.LitServer(
        api, accelerator="cpu", workers_per_device=int(os.environ.get("BENCH_WORKERS", "1"))
    )
    server.run(
        host="127.0.0.1",
        port=int(os.environ["BENCH_PORT"]),
        generate_client_file=False,
        log_level="warning",
    )

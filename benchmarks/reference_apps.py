"""Reference servers measured beside modelplex (see docs/benchmarks.md).

* `handwritten`: what a user writes without a model server: FastAPI, a
  pydantic body, the trained digits pipeline loaded with joblib and one
  `predict_proba` per request in a sync endpoint (FastAPI's thread pool).
* `noop`: the same endpoint without the model: the HTTP floor.

Run with: uvicorn benchmarks.reference_apps:handwritten (MODELPLEX_BENCH_JOBLIB=path).
"""

from __future__ import annotations

import os
from typing import Any

import joblib
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel


class Body(BaseModel):
    instance: list[float]


handwritten = FastAPI()
noop = FastAPI()
_JOBLIB = os.environ.get("MODELPLEX_BENCH_JOBLIB")
_model: Any = joblib.load(_JOBLIB) if _JOBLIB else None


@handwritten.post("/predict")
def predict(body: Body) -> dict[str, Any]:
    probabilities = _model.predict_proba(np.asarray([body.instance], dtype=np.float32))[0]
    best = int(probabilities.argmax())
    return {
        "predictions": [
            {"label": str(best), "class_id": best, "confidence": float(probabilities[best])}
        ]
    }


@noop.post("/predict")
async def predict_nothing(body: Body) -> dict[str, Any]:
    return {"predictions": [{"label": "0", "class_id": 0, "confidence": 1.0}]}

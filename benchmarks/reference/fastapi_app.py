"""What a user writes without a model server: a joblib model behind an async FastAPI endpoint.

BENCH_JOBLIB=lr.joblib uvicorn --app-dir benchmarks/reference fastapi_app:app --workers 2
"""

import os

import joblib
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

model = joblib.load(os.environ["BENCH_JOBLIB"])
app = FastAPI()


class Body(BaseModel):
    instance: list[float]


@app.post("/predict")
async def predict(body: Body) -> dict[str, int]:
    return {"label": int(model.predict(np.asarray([body.instance], dtype=np.float32))[0])}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}

"""`digits`: a scikit-learn classifier on the bundled 8x8 digits data set.

Version 1 is the fitted pipeline saved with joblib (the `sklearn` runtime);
version 2 is the same pipeline converted exactly to ONNX (default: ONNX Runtime
answers one row in microseconds, where serving overhead dominates).
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

MODEL_TOML = """\
description = "Handwritten digit classifier (scikit-learn on the 8x8 digits data set)"
runtime = "onnx"
default_version = "2"
timeout_ms = 2000

[[inputs]]
name = "pixels"
datatype = "FP32"
shape = [64]

[[outputs]]
name = "label"
datatype = "INT64"
shape = []

[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [10]

[classification]
output = "probabilities"
labels = "labels.txt"

[batching]
max_batch_size = 64
max_batch_delay_ms = 0
max_queue_size = 1024

[sklearn]
methods = { label = "predict", probabilities = "predict_proba" }

[versions."1"]
runtime = "sklearn"
description = "the fitted pipeline, loaded with joblib"

[versions."2"]
description = "the same pipeline converted to ONNX with skl2onnx"
"""

TRAIN_ROWS = 1500
"""Rows of load_digits used for training; the rest are held out."""


def train() -> Pipeline:
    features, labels = load_digits(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
    pipeline.fit(features[:TRAIN_ROWS].astype(np.float32), labels[:TRAIN_ROWS])
    return pipeline


def build(folder: Path) -> None:
    pipeline = train()
    (folder / "1").mkdir(parents=True)
    (folder / "2").mkdir()
    joblib.dump(pipeline, folder / "1" / "model.joblib")
    onnx_model = to_onnx(
        pipeline,
        initial_types=[("pixels", FloatTensorType([None, 64]))],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        target_opset=17,
    )
    (folder / "2" / "model.onnx").write_bytes(onnx_model.SerializeToString())
    (folder / "labels.txt").write_text("\n".join(str(d) for d in range(10)) + "\n")
    (folder / "model.toml").write_text(MODEL_TOML)

"""The models and request bodies every server in `benchmarks.peers` gets.

One set of joblib files, built once per run into the work folder:
* `lr.joblib`: LogisticRegression on scikit-learn's load_digits;
* `forest.joblib`: a RandomForest of 200 trees on the same data;
and from them a modelplex model repository (`lr` with default settings, no
[batching] section; `lr-batch` with max_batch_size 64; `forest-batch`) and an
MLServer one (the model-settings.json files kept in benchmarks/reference/mlserver,
beside a copy of the same joblib file). Every server answers `predict` only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

REFERENCE = Path(__file__).resolve().parent / "reference"

MODEL_TOML = """\
description = "{description}"
runtime = "sklearn"

[[inputs]]
name = "pixels"
datatype = "FP32"
shape = [64]

[[outputs]]
name = "label"
datatype = "INT64"
shape = []

[sklearn]
methods = {{ label = "predict" }}
{batching}"""

BATCHING = """
[batching]
max_batch_size = 64
"""

MODELPLEX_MODELS = {
    # name: (joblib file, description, batching section)
    "lr": ("lr.joblib", "LogisticRegression, default settings", ""),
    "lr-batch": ("lr.joblib", "LogisticRegression, max_batch_size 64", BATCHING),
    "forest-batch": ("forest.joblib", "RandomForest of 200 trees, max_batch_size 64", BATCHING),
}


def row() -> np.ndarray:
    """The one digits row every request sends."""
    return np.asarray(load_digits(return_X_y=True)[0][1500], dtype=np.float32)


def build_joblib(folder: Path) -> dict[str, Path]:
    features, labels = load_digits(return_X_y=True)
    features = features.astype(np.float32)
    files = {"lr": folder / "lr.joblib", "forest": folder / "forest.joblib"}
    joblib.dump(
        LogisticRegression(max_iter=5000, random_state=0).fit(features, labels), files["lr"]
    )
    forest = RandomForestClassifier(n_estimators=200, random_state=0).fit(features, labels)
    # One thread per predict: several requests, not one, share the cores.
    forest.set_params(n_jobs=1)
    joblib.dump(forest, files["forest"])
    return files


def build_modelplex_repository(folder: Path, files: dict[str, Path]) -> Path:
    repo = folder / "modelplex-repo"
    for name, (artifact, description, batching) in MODELPLEX_MODELS.items():
        version = repo / name / "1"
        version.mkdir(parents=True)
        shutil.copy(folder / artifact, version / "model.joblib")
        text = MODEL_TOML.format(description=description, batching=batching)
        (repo / name / "model.toml").write_text(text)
    return repo


def build_mlserver_repository(folder: Path) -> Path:
    """The reference model-settings.json files, each beside its joblib file."""
    repo = folder / "mlserver-repo"
    for settings in sorted((REFERENCE / "mlserver").glob("*/model-settings.json")):
        target = repo / settings.parent.name
        target.mkdir(parents=True)
        shutil.copy(settings, target / "model-settings.json")
        uri = json.loads(settings.read_text())["parameters"]["uri"]
        shutil.copy(folder / Path(uri).name, target / Path(uri).name)
    shutil.copy(REFERENCE / "mlserver" / "settings.json", repo / "settings.json")
    return repo


def write_bodies(folder: Path) -> dict[str, Path]:
    """Request bodies by kind: /v1 (modelplex, FastAPI, LitServe) and V2 JSON."""
    values = row().tolist()
    bodies = {
        "v1": {"instance": values},
        "v2": {
            "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": values}]
        },
    }
    paths = {}
    for kind, body in bodies.items():
        paths[kind] = folder / f"body-{kind}.json"
        paths[kind].write_text(json.dumps(body))
    return paths

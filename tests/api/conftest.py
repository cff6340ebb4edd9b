"""A server over a small repository of test models next to deliberately broken folders."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelplex.server import RunningServer, start
from tests.conftest import settings_for, wait_ready
from tests.gates import GATED_MODEL
from tests.helpers import copy_model, write_model, write_python_model

BATCHING = """
[batching]
max_batch_size = 16
max_batch_delay_ms = 50
max_queue_size = 64
"""

ONE_AT_A_TIME = """
[batching]
max_batch_size = 1
max_batch_delay_ms = 0
max_queue_size = 2
"""


INT_SUM_TOML = """
runtime = "python"
[[inputs]]
name = "x"
datatype = "INT32"
shape = [2]
[[outputs]]
name = "total"
datatype = "INT64"
shape = []
"""
INT_SUM_CODE = """
class Model:
    def predict(self, batch):
        return {"total": batch["x"].sum(axis=1)}
"""
FORTRAN_TOML = """
runtime = "python"
[[inputs]]
name = "x"
datatype = "FP32"
shape = [3]
[[outputs]]
name = "y"
datatype = "FP32"
shape = [3]
[batching]
max_batch_size = 8
"""
FORTRAN_CODE = """
import numpy as np

class Model:
    def predict(self, batch):
        return {"y": np.asfortranarray(batch["x"] * 2)}  # rows are not contiguous
"""
ECHO_BYTES_TOML = """
runtime = "python"
[[inputs]]
name = "text"
datatype = "BYTES"
shape = {shape}
[[outputs]]
name = "echo"
datatype = "BYTES"
shape = {shape}
"""
ECHO_BYTES_CODE = """
import numpy as np

class Model:
    def predict(self, batch):
        upper = np.vectorize(lambda b: b.upper(), otypes=[object])
        return {"echo": upper(batch["text"])}
"""


def build_zoo(repo: Path, example_repo: Path) -> None:
    copy_model(example_repo, "digits", repo)
    write_python_model(repo, "doubler", batching=BATCHING)
    gated = write_python_model(repo, "batched", batching=BATCHING)
    (gated / "1" / "model.py").write_text(GATED_MODEL)
    toml = gated / "model.toml"
    toml.write_text(
        toml.read_text().replace(
            "options = { delay_ms = 0, fail = false }", 'options = { gate = "batched" }'
        )
    )
    write_python_model(repo, "slow", delay_ms=1500, timeout_ms=300)
    write_python_model(repo, "held", delay_ms=600)
    # One call at a time: a request that arrives while one runs must wait, never join it.
    write_python_model(repo, "queued", delay_ms=600, batching="[batching]\nmax_batch_size = 1\n")
    write_python_model(repo, "tiny-queue", delay_ms=300, batching=ONE_AT_A_TIME, timeout_ms=10000)
    write_python_model(repo, "crashes", fail=True)
    write_python_model(repo, "versioned", versions=("1", "2", "10"))
    write_model(repo, "int-sum", INT_SUM_TOML, INT_SUM_CODE)
    write_model(repo, "fortran", FORTRAN_TOML, FORTRAN_CODE)
    for shape in ("[1]", "[-1]"):
        name = "bytes-one" if shape == "[1]" else "bytes-many"
        write_model(repo, name, ECHO_BYTES_TOML.format(shape=shape), ECHO_BYTES_CODE)
    # Broken folders, each for a different reason.
    (repo / "bad-toml").mkdir()
    (repo / "bad-toml" / "model.toml").write_text("runtime = [unclosed")
    missing = write_python_model(repo, "missing-artifact")
    (missing / "1" / "model.py").unlink()
    typo = write_python_model(repo, "typo-key")
    (typo / "model.toml").write_text((typo / "model.toml").read_text() + "\nmax_batchsize = 3\n")
    wrong = copy_model(example_repo, "digits", repo / "_tmp")
    wrong.rename(repo / "wrong-signature")
    (repo / "_tmp").rmdir()
    toml = repo / "wrong-signature" / "model.toml"
    toml.write_text(toml.read_text().replace('name = "pixels"', 'name = "features"', 1))
    loose = copy_model(example_repo, "digits", repo / "_loose")
    loose.rename(repo / "loose-onnx")
    (repo / "_loose").rmdir()
    toml = repo / "loose-onnx" / "model.toml"  # -1 where the ONNX graph wants 64 features
    toml.write_text(toml.read_text().replace("shape = [64]", "shape = [-1]", 1))
    half = write_python_model(repo, "half-broken", versions=("1", "2"))
    (half / "2" / "model.py").write_text("raise ImportError('no such dependency')\n")
    # The digits graph with no signature in model.toml: it serves the graph's own.
    write_graph_model(repo, example_repo, "graph-signature", GRAPH_ONLY_TOML)
    write_graph_model(repo, example_repo, "graph-outputs", GRAPH_OUTPUTS_TOML)
    write_graph_model(repo, example_repo, "graph-no-scores", GRAPH_NO_SCORES_TOML)


GRAPH_ONLY_TOML = """
runtime = "onnx"
[classification]
output = "probabilities"
labels = "labels.txt"
"""
GRAPH_OUTPUTS_TOML = """
runtime = "onnx"
[[outputs]]
name = "probabilities"
datatype = "FP32"
shape = [10]
"""
GRAPH_NO_SCORES_TOML = """
runtime = "onnx"
[classification]
output = "scores"
"""


def write_graph_model(repo: Path, example_repo: Path, name: str, toml: str) -> None:
    """The example digits ONNX graph as version 1 of `name`, with this model.toml."""
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    shutil.copy(example_repo / "digits" / "2" / "model.onnx", folder / "1" / "model.onnx")
    shutil.copy(example_repo / "digits" / "labels.txt", folder / "labels.txt")
    (folder / "model.toml").write_text(toml)


@pytest.fixture(scope="session")
def zoo_repo(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("zoo")
    build_zoo(repo, example_repo)
    return repo


@pytest.fixture(scope="session")
def zoo_server(zoo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = settings_for(tmp_path_factory.mktemp("zoo-server"), max_request_bytes=64 * 1024)
    with start(settings, zoo_repo) as server:
        yield server


@pytest.fixture
def zoo(zoo_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=zoo_server.url, timeout=30) as http:
        wait_ready(http)
        yield http

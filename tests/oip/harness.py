"""A `V2Service` over a real registry and data plane, loaded from a small repository.

Shared by the protocol's unit tests (`tests/oip`) and the gRPC adapter's
(`tests/grpc/isolated`), which build the service the way `modelplex.app` does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from modelplex.core.dataplane import DataPlane
from modelplex.core.registry import ModelRegistry
from modelplex.oip.service import V2Service
from tests.conftest import settings_for
from tests.helpers import copy_model, write_model, write_python_model

ANIMALS_TOML = """
runtime = "python"

[[inputs]]
name = "x"
datatype = "FP32"
shape = [3]

[[outputs]]
name = "scores"
datatype = "FP32"
shape = [3]

[[outputs]]
name = "total"
datatype = "FP32"
shape = []

[classification]
output = "scores"
labels = "labels.txt"
"""
ANIMALS_CODE = """
class Model:
    def predict(self, batch):
        return {"scores": batch["x"] * 1, "total": batch["x"].sum(axis=1)}
"""
ANIMALS = ("cat", "dog", "bird")

DOUBLER_BATCHING = """
[batching]
max_batch_size = 8
max_batch_delay_ms = 5
max_queue_size = 64
instances = 2
"""
SLOW_MS = 2000
"""How long `slow` sleeps: far past any deadline the tests give it."""


def build_repo(repo: Path, example_repo: Path) -> Path:
    """digits (ONNX v2, sklearn v1), three python models and one broken folder."""
    repo.mkdir(parents=True, exist_ok=True)
    copy_model(example_repo, "digits", repo)
    write_python_model(repo, "doubler", versions=("1", "2"), batching=DOUBLER_BATCHING)
    write_python_model(repo, "slow", delay_ms=SLOW_MS)
    animals = write_model(repo, "animals", ANIMALS_TOML, ANIMALS_CODE)
    (animals / "labels.txt").write_text("\n".join(ANIMALS) + "\n")
    (repo / "broken").mkdir()
    (repo / "broken" / "model.toml").write_text("runtime = [unclosed")
    return repo


@asynccontextmanager
async def open_service(repo: Path, tmp: Path) -> AsyncIterator[V2Service]:
    """The service over every model of `repo`, closed (drained) on exit."""
    settings = settings_for(tmp)
    registry = ModelRegistry(repo, settings)
    registry.load_all()
    dataplane = DataPlane(registry, settings)
    try:
        yield V2Service(dataplane)
    finally:
        await registry.close()
        dataplane.close()

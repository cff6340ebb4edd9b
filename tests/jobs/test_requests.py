"""A model job's request as the store keeps it: checked once, restored without a re-check."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from modelplex.core.dataplane import DataPlane
from modelplex.core.registry import ModelRegistry
from modelplex.core.types import InferenceRequest
from modelplex.core.validation import CheckedRequest, check, trusted
from modelplex.errors import Conflict
from modelplex.jobs import requests
from modelplex.settings import Settings
from tests.helpers import write_model

pytestmark = pytest.mark.anyio

MIXED = """
runtime = "python"
[[inputs]]
name = "f"
datatype = "FP32"
shape = [2]
[[inputs]]
name = "i"
datatype = "INT64"
shape = [-1]
[[inputs]]
name = "s"
datatype = "BYTES"
shape = [1]
[[outputs]]
name = "total"
datatype = "INT64"
shape = []
[[outputs]]
name = "scaled"
datatype = "FP32"
shape = [2]
[classification]
output = "scaled"
"""
MIXED_CODE = """
import numpy as np


class Model:
    def predict(self, batch):
        return {"total": batch["i"].sum(axis=1), "scaled": batch["f"] * 2}
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Repo:
    path: Path
    registry: ModelRegistry
    dataplane: DataPlane


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repo]:
    path = tmp_path / "repo"
    write_model(path, "mixed", MIXED, MIXED_CODE)
    settings = Settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    registry = ModelRegistry(path, settings)
    registry.load_all()
    dataplane = DataPlane(registry, settings)
    try:
        yield Repo(path, registry, dataplane)
    finally:
        await registry.close()
        dataplane.close()


def bytes_column(*values: bytes) -> np.ndarray:
    column = np.empty((len(values), 1), dtype=object)
    column[:, 0] = values
    return column


def inputs() -> dict[str, np.ndarray]:
    return {
        # Values JSON numbers would bend: NaN, infinity, the smallest subnormal.
        "f": np.array([[1.5, np.nan], [np.inf, np.float32(1e-45)]], dtype=np.float32),
        # Beyond a float's exact integers: only a raw encoding keeps them.
        "i": np.array([[2**53 + 1, -(2**62)], [7, 0]], dtype=np.int64),
        "s": bytes_column("héllo".encode(), b"\x00\xff binary"),
    }


def checked_request(repo: Repo, **options: Any) -> CheckedRequest:
    served = repo.registry.get("mixed")
    request = InferenceRequest(
        model="mixed", version="1", inputs=inputs(), arrived_at=time.monotonic(), **options
    )
    return check(served, request)


def stored(checked: CheckedRequest) -> dict[str, Any]:
    """What the job store hands back: the document through JSON."""
    document: dict[str, Any] = orjson.loads(orjson.dumps(requests.encode(checked)))
    return document


async def test_a_checked_request_survives_the_store_exactly(repo: Repo) -> None:
    checked = checked_request(repo)
    document = stored(checked)
    assert document["format"] == requests.FORMAT
    assert document["signature"] == checked.served.signature
    assert {name: t["datatype"] for name, t in document["inputs"].items()} == {
        "f": "FP32",
        "i": "INT64",
        "s": "BYTES",
    }
    request, signature = requests.decode(document, "mixed", "1")
    assert signature == checked.served.signature
    assert (request.model, request.version) == ("mixed", "1")
    original = inputs()
    assert set(request.inputs) == set(original)
    for name in ("f", "i"):
        assert request.inputs[name].dtype == original[name].dtype
        assert request.inputs[name].shape == original[name].shape
        # Bit for bit: NaN included, and the int64s a float could not hold.
        assert request.inputs[name].tobytes() == original[name].tobytes()
    assert request.inputs["s"].dtype == object
    assert request.inputs["s"].shape == (2, 1)
    assert request.inputs["s"].tolist() == [["héllo".encode()], [b"\x00\xff binary"]]


async def test_options_are_kept(repo: Repo) -> None:
    with_top_k = stored(checked_request(repo, top_k=3))
    request, _ = requests.decode(with_top_k, "mixed", "1")
    assert request.top_k == 3
    with_outputs = stored(checked_request(repo, outputs=["total"]))
    request, _ = requests.decode(with_outputs, "mixed", "1")
    assert list(request.outputs or []) == ["total"]
    without = stored(checked_request(repo))
    request, _ = requests.decode(without, "mixed", "1")
    assert request.top_k is None
    assert request.outputs is None


async def test_the_restored_request_runs_as_checked(repo: Repo) -> None:
    request, signature = requests.decode(stored(checked_request(repo)), "mixed", "1")
    restored = trusted(repo.dataplane.resolve("mixed", "1"), request, signature)
    assert restored.rows == 2
    result = await repo.dataplane.execute(restored)
    assert result.outputs["total"].tolist() == [2**53 + 1 - 2**62, 7]
    assert result.outputs["scaled"].dtype == np.float32


@pytest.mark.parametrize(
    "document",
    [
        {"instances": [[1.0, 2.0]]},
        {"format": "checked-request/2", "inputs": {}},
        [requests.FORMAT],
        requests.FORMAT,
        None,
    ],
)
def test_only_a_checked_document_is_checked(document: Any) -> None:
    assert not requests.is_checked(document)


async def test_an_encoded_request_is_checked(repo: Repo) -> None:
    assert requests.is_checked(requests.encode(checked_request(repo)))
    assert requests.is_checked(stored(checked_request(repo)))


async def test_a_version_whose_signature_changed_refuses_the_stored_request(
    repo: Repo,
) -> None:
    document = stored(checked_request(repo))
    # The folder is reloaded with another contract: "scaled" is now FP64.
    changed = MIXED.replace(
        'name = "scaled"\ndatatype = "FP32"', 'name = "scaled"\ndatatype = "FP64"'
    )
    assert changed != MIXED
    (repo.path / "mixed" / "model.toml").write_text(changed)
    await repo.registry.reload("mixed")
    served = repo.dataplane.resolve("mixed", "1")
    assert served.signature != document["signature"]
    request, signature = requests.decode(document, "mixed", "1")
    with pytest.raises(Conflict, match="has changed its signature since the request was checked"):
        trusted(served, request, signature)
    # The same request checked against the new contract is trusted with its signature.
    assert trusted(served, request, served.signature).rows == 2

"""Hostile tensors over V2 REST on a real socket: stable errors, and the server keeps
serving afterwards."""

from __future__ import annotations

import struct
from typing import Any

import httpx
import numpy as np
import pytest
from sklearn.datasets import load_digits

from modelplex.settings import Settings

DIGITS = load_digits(return_X_y=True)[0][:2].astype(np.float32)
ELEMENT_LIMIT = Settings.model_fields["max_tensor_elements"].default


def assert_still_serving(client: httpx.Client) -> None:
    tensor = {
        "name": "pixels",
        "datatype": "FP32",
        "shape": [2, 64],
        "data": DIGITS.ravel().tolist(),
    }
    response = client.post("/v2/models/digits/infer", json={"inputs": [tensor]})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["name"] == "label"


def binary_bytes(client: httpx.Client, raw: bytes, shape: list[int]) -> httpx.Response:
    header = (
        b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": '
        + str(shape).encode()
        + b', "parameters": {"binary_data_size": '
        + str(len(raw)).encode()
        + b"}}]}"
    )
    return client.post(
        "/v2/models/image-classifier/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def test_a_flood_of_empty_bytes_elements_is_payload_too_large(client: httpx.Client) -> None:
    count = 2 * ELEMENT_LIMIT  # 8 MiB of empty elements, under the body limit
    response = binary_bytes(client, bytes(4 * count), [count])
    assert response.status_code == 413, response.text
    assert response.json() == {
        "error": f"input 'image': a request carries at most {ELEMENT_LIMIT} BYTES elements"
    }
    assert_still_serving(client)


def test_a_short_shape_over_many_bytes_elements_is_invalid(client: httpx.Client) -> None:
    raw = (struct.pack("<I", 1) + b"a") * (1024 * 1024)
    response = binary_bytes(client, raw, [3])
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "input 'image': more than 3 BYTES elements for shape [3]"
    assert_still_serving(client)


@pytest.mark.parametrize("depth", [65, 1_000])
def test_deeply_nested_bytes_data_is_invalid_input(client: httpx.Client, depth: int) -> None:
    data = "[" * depth + '"aGk="' + "]" * depth  # written by hand: json.dumps would recurse
    body = '{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": %s}]}'
    response = client.post(
        "/v2/models/image-classifier/infer",
        content=(body % data).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert "nested deeper than 32 levels" in response.json()["error"]
    assert_still_serving(client)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([[0.0] * 63, [0.0] * 65], "data is ragged"),
        ([True] + [0.0] * 127, "not booleans"),
    ],
)
def test_ragged_or_mixed_json_is_invalid_input(
    client: httpx.Client, data: list[Any], fragment: str
) -> None:
    tensor = {"name": "pixels", "datatype": "FP32", "shape": [2, 64], "data": data}
    response = client.post("/v2/models/digits/infer", json={"inputs": [tensor]})
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]
    assert_still_serving(client)

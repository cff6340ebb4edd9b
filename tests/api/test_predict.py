"""POST /v1/models/{model}[/versions/{v}]/predict with the real digits model."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from sklearn.datasets import load_digits

from modelplex.examples.digits import TRAIN_ROWS


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    features, labels = load_digits(return_X_y=True)
    return features[TRAIN_ROWS : TRAIN_ROWS + 40], labels[TRAIN_ROWS : TRAIN_ROWS + 40]


@pytest.mark.parametrize("version", ["1", "2"])
def test_each_version_matches_the_trained_estimator(
    client: httpx.Client,
    example_repo: Path,
    held_out: tuple[np.ndarray, np.ndarray],
    version: str,
) -> None:
    features, _ = held_out
    estimator = joblib.load(example_repo / "digits" / "1" / "model.joblib")
    expected = estimator.predict_proba(features.astype(np.float32))
    response = client.post(
        f"/v1/models/digits/versions/{version}/predict",
        json={"instances": features.tolist()},
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Model-Version"] == version
    predictions = response.json()["predictions"]
    assert [p["class_id"] for p in predictions] == expected.argmax(axis=1).tolist()
    assert [p["label"] for p in predictions] == [str(c) for c in expected.argmax(axis=1)]
    confidences = np.array([p["confidence"] for p in predictions])
    np.testing.assert_allclose(confidences, expected.max(axis=1), rtol=1e-4, atol=1e-5)


def test_default_version_is_onnx_and_accurate(
    client: httpx.Client, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    features, labels = held_out
    response = client.post("/v1/models/digits/predict", json={"instances": features.tolist()})
    body = response.json()
    assert body["model"] == {"name": "digits", "version": "2"}
    accuracy = np.mean([p["class_id"] for p in body["predictions"]] == labels)
    assert accuracy > 0.85


def test_single_instance_bare_and_keyed(
    client: httpx.Client, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    row = held_out[0][3].tolist()
    bare = client.post("/v1/models/digits/predict", json={"instance": row}).json()
    keyed = client.post("/v1/models/digits/predict", json={"instance": {"pixels": row}}).json()
    assert len(bare["predictions"]) == 1
    assert bare["predictions"] == keyed["predictions"]


def test_top_k_and_output_selection(
    client: httpx.Client, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    row = held_out[0][0].tolist()
    response = client.post(
        "/v1/models/digits/predict", json={"instance": row, "parameters": {"top_k": 3}}
    )
    prediction = response.json()["predictions"][0]
    assert len(prediction["top_k"]) == 3
    assert prediction["top_k"][0]["class_id"] == prediction["class_id"]


def test_raw_outputs_for_models_without_classification(zoo: httpx.Client) -> None:
    response = zoo.post("/v1/models/doubler/predict", json={"instances": [[1, 2], [3.5, -1]]})
    assert response.json()["predictions"] == [{"y": [2.0, 4.0]}, {"y": [7.0, -2.0]}]


def test_raw_outputs_of_a_classification_model_by_name(
    client: httpx.Client, held_out: tuple[np.ndarray, np.ndarray], photos: dict[str, bytes]
) -> None:
    rows = held_out[0][:2].tolist()
    labelled = client.post("/v1/models/digits/predict", json={"instances": rows}).json()
    raw = client.post(
        "/v1/models/digits/predict",
        json={"instances": rows, "parameters": {"outputs": ["probabilities"]}},
    )
    assert raw.status_code == 200, raw.text
    predictions = raw.json()["predictions"]
    assert [set(p) for p in predictions] == [{"probabilities"}, {"probabilities"}]
    assert [int(np.argmax(p["probabilities"])) for p in predictions] == [
        p["class_id"] for p in labelled["predictions"]
    ]
    sklearn = client.post(
        "/v1/models/digits/versions/1/predict",
        json={"instances": rows, "parameters": {"outputs": ["probabilities"]}},
    ).json()["predictions"]
    np.testing.assert_allclose(
        [p["probabilities"] for p in sklearn],
        [p["probabilities"] for p in predictions],
        rtol=1e-4,
        atol=1e-5,
    )
    both = client.post(
        "/v1/models/digits/predict",
        json={"instance": rows[0], "parameters": {"outputs": ["label", "probabilities"]}},
    ).json()["predictions"][0]
    assert both["label"] == labelled["predictions"][0]["class_id"]  # the graph's own label
    assert len(both["probabilities"]) == 10
    image = {"b64": base64.b64encode(photos["coffee.png"]).decode()}
    scores = client.post(
        "/v1/models/image-classifier/predict",
        json={"instance": image, "parameters": {"outputs": ["probabilities"]}},
    ).json()["predictions"][0]["probabilities"]
    assert len(scores) == 1000
    assert int(np.argmax(scores)) == 967


@pytest.mark.parametrize(
    ("model", "body", "message"),
    [
        ("doubler", {"instance": [1, 2], "parameters": {"top_k": 2}}, "has no classification"),
        ("digits", {"instance": [0] * 64, "parameters": {"outputs": ["nope"]}}, "unknown outputs"),
        ("digits", {"instance": [0] * 64, "parameters": {"outputs": []}}, "at least one"),
        (
            "digits",
            {"instance": [0] * 64, "parameters": {"top_k": 2, "outputs": ["label"]}},
            "not both",
        ),
    ],
)
def test_parameters_a_model_cannot_honour_are_refused(
    zoo: httpx.Client, model: str, body: dict[str, Any], message: str
) -> None:
    response = zoo.post(f"/v1/models/{model}/predict", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "INVALID_INPUT"
    assert message in response.json()["detail"]


def test_top_k_in_a_form_for_a_model_without_classification_is_refused(
    zoo: httpx.Client,
) -> None:
    response = zoo.post(
        "/v1/models/bytes-one/predict", files=[("text", ("a.txt", b"ab"))], data={"top_k": "2"}
    )
    assert response.status_code == 422, response.text
    assert "has no classification" in response.json()["detail"]


def test_detail_levels(client: httpx.Client, held_out: tuple[np.ndarray, np.ndarray]) -> None:
    body = {"instances": held_out[0][:2].tolist()}
    minimal = client.post(
        "/v1/models/digits/predict", json=body, headers={"X-Response-Detail": "minimal"}
    )
    assert set(minimal.json()) == {"predictions"}
    assert minimal.headers["X-Model-Version"] == "2"

    standard = client.post("/v1/models/digits/predict", json=body).json()
    assert set(standard) == {"id", "model", "predictions", "metadata"}
    assert set(standard["metadata"]) == {"processing_time_ms"}

    verbose = client.post(
        "/v1/models/digits/predict", json=body, headers={"X-Response-Detail": "VERBOSE"}
    ).json()
    metadata = verbose["metadata"]
    assert set(metadata["timing"]) == {
        "decode_ms",
        "preprocess_ms",
        "queue_wait_ms",
        "inference_ms",
        "postprocess_ms",
    }
    assert metadata["batch_size"] >= 2
    assert metadata["input_shape"] == {"pixels": [2, 64]}
    assert metadata["model_version"]["runtime"] == "onnx"
    assert metadata["model_version"]["is_default"] is True
    assert metadata["processing_time_ms"] >= metadata["timing"]["inference_ms"]


def test_verbose_classify_reports_preprocessing(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    response = client.post(
        "/v1/classify",
        files={"image": ("cat.jpg", photos["cat.jpg"])},
        headers={"X-Response-Detail": "verbose"},
    )
    metadata = response.json()["metadata"]
    assert metadata["input_shape"] == {"input": [1, 3, 224, 224]}
    assert metadata["timing"]["decode_ms"] > 0
    assert metadata["timing"]["preprocess_ms"] > 0


def test_many_images_in_one_predict_multipart(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    files = [("image", (name, data)) for name, data in sorted(photos.items())]
    response = client.post("/v1/models/image-classifier/predict", files=files)
    assert response.status_code == 200, response.text
    ids = [p["class_id"] for p in response.json()["predictions"]]
    assert ids[0] in {281, 282, 285}  # cat.jpg
    assert ids[1:] == [967, 872]  # coffee.png, tripod.webp


def test_request_larger_than_a_batch_is_split_and_joined(zoo: httpx.Client) -> None:
    rows = [[float(i), float(-i)] for i in range(40)]  # max_batch_size is 16
    response = zoo.post(
        "/v1/models/doubler/predict",
        json={"instances": rows},
        headers={"X-Response-Detail": "verbose"},
    )
    assert response.status_code == 200, response.text
    assert [p["y"] for p in response.json()["predictions"]] == [[2 * a, 2 * b] for a, b in rows]
    assert response.json()["metadata"]["batch_size"] <= 16


def test_outputs_in_any_memory_layout(zoo: httpx.Client) -> None:
    rows = [[1, 2, 3], [4, 5, 6]]
    response = zoo.post("/v1/models/fortran/predict", json={"instances": rows})
    assert response.status_code == 200, response.text
    assert [p["y"] for p in response.json()["predictions"]] == [[2, 4, 6], [8, 10, 12]]


def test_bytes_inputs_of_shape_one_over_json_and_multipart(zoo: httpx.Client) -> None:
    json_answer = zoo.post("/v1/models/bytes-one/predict", json={"instances": [["ab"], ["cd"]]})
    assert json_answer.json()["predictions"] == [{"echo": ["AB"]}, {"echo": ["CD"]}]
    files = [("text", ("a.txt", b"ab")), ("text", ("b.txt", b"cd"))]
    form_answer = zoo.post("/v1/models/bytes-one/predict", files=files)
    assert form_answer.json()["predictions"] == json_answer.json()["predictions"]


def test_bytes_inputs_of_any_length(zoo: httpx.Client) -> None:
    response = zoo.post(
        "/v1/models/bytes-many/predict", json={"instance": ["ab", {"b64": "Y2Q="}, "ef"]}
    )
    assert response.json()["predictions"] == [{"echo": ["AB", "CD", "EF"]}]

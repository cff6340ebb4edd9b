"""POST /v1/classify with the real EfficientNet-Lite0 classifier on real photos."""

from __future__ import annotations

import base64

import httpx
import pytest

# ImageNet class ids: 281 tabby, 282 tiger cat, 285 Egyptian cat; 967 espresso; 872 tripod.
CAT_CLASSES = {281, 282, 285}
EXPECTED = {"cat.jpg": CAT_CLASSES, "coffee.png": {967}, "tripod.webp": {872}}


@pytest.mark.parametrize("photo", sorted(EXPECTED))
def test_multipart_upload_top1_is_the_photographed_class(
    client: httpx.Client, photos: dict[str, bytes], photo: str
) -> None:
    response = client.post("/v1/classify", files={"image": (photo, photos[photo])})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "image-classifier", "version": "1"}
    assert len(body["predictions"]) == 5
    assert body["predictions"][0]["class_id"] in EXPECTED[photo]
    confidences = [p["confidence"] for p in body["predictions"]]
    assert confidences == sorted(confidences, reverse=True)
    assert 0 < sum(confidences) <= 1.0001
    assert response.headers["X-Model-Version"] == "1"


@pytest.mark.parametrize("photo", sorted(EXPECTED))
def test_base64_json_top1_is_the_photographed_class(
    client: httpx.Client, photos: dict[str, bytes], photo: str
) -> None:
    payload = {"image": base64.b64encode(photos[photo]).decode(), "top_k": 3}
    response = client.post("/v1/classify", json=payload)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    assert predictions[0]["class_id"] in EXPECTED[photo]


def test_labels_are_imagenet_wordnet_names(client: httpx.Client, photos: dict[str, bytes]) -> None:
    response = client.post("/v1/classify", files={"image": ("c.png", photos["coffee.png"])})
    top = response.json()["predictions"][0]
    assert top == {
        "label": "espresso",
        "class_id": 967,
        "confidence": pytest.approx(top["confidence"]),
    }
    assert top["confidence"] > 0.8


def test_multipart_and_base64_give_the_same_answer(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    data = photos["cat.jpg"]
    a = client.post("/v1/classify", files={"image": ("cat.jpg", data)}).json()
    b = client.post("/v1/classify", json={"image": base64.b64encode(data).decode()}).json()
    assert a["predictions"] == b["predictions"]


def test_data_url_is_accepted(client: httpx.Client, photos: dict[str, bytes]) -> None:
    url = "data:image/png;base64," + base64.b64encode(photos["coffee.png"]).decode()
    response = client.post("/v1/classify", json={"image": url, "top_k": 1})
    assert response.json()["predictions"][0]["class_id"] == 967


def test_classify_by_predict_endpoint_matches(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    """The generic predict route with a {"b64": ...} BYTES instance reaches the same model."""
    encoded = base64.b64encode(photos["coffee.png"]).decode()
    response = client.post(
        "/v1/models/image-classifier/predict",
        json={"instances": [{"b64": encoded}], "parameters": {"top_k": 2}},
    )
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    assert prediction["class_id"] == 967
    assert prediction["top_k"][0]["class_id"] == 967
    assert len(prediction["top_k"]) == 2


def test_classify_with_a_model_that_is_not_an_image_classifier(
    client: httpx.Client, photos: dict[str, bytes]
) -> None:
    response = client.post(
        "/v1/classify", files={"image": ("c.png", photos["coffee.png"])}, data={"model": "digits"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "INVALID_INPUT"

"""Model listing, detail and the repository's failure reporting over HTTP."""

from __future__ import annotations

import httpx

BROKEN = {"bad-toml", "missing-artifact", "typo-key", "wrong-signature"}


def test_readyz_reports_ready_and_failed_models(zoo: httpx.Client) -> None:
    response = zoo.get("/readyz")
    assert response.status_code == 200
    models = response.json()["models"]
    assert {"digits", "doubler", "versioned"} <= set(models["ready"])
    # half-broken's default version is the broken one, so the model is not ready as a whole.
    assert {*BROKEN, "half-broken"} <= set(models["failed"])


def test_healthz_is_live(zoo: httpx.Client) -> None:
    assert zoo.get("/healthz").json() == {"status": "ok"}


def test_broken_folders_are_listed_with_their_reason(zoo: httpx.Client) -> None:
    models = {m["name"]: m for m in zoo.get("/v1/models").json()["models"]}
    assert models["bad-toml"]["state"] == "FAILED"
    assert "not valid TOML" in models["bad-toml"]["reason"]
    assert "model.py" in models["missing-artifact"]["reason"]
    assert "max_batchsize" in models["typo-key"]["reason"]
    assert "'pixels'" in models["wrong-signature"]["reason"]
    assert models["digits"]["state"] == "READY"


def test_broken_model_answers_model_not_ready(zoo: httpx.Client) -> None:
    response = zoo.post("/v1/models/missing-artifact/predict", json={"instance": [1, 2]})
    assert response.status_code == 503
    assert response.json()["code"] == "MODEL_NOT_READY"
    assert response.headers["content-type"] == "application/problem+json"


def test_one_broken_version_leaves_the_others_serving(zoo: httpx.Client) -> None:
    detail = zoo.get("/v1/models/half-broken").json()
    states = {v["version"]: v["state"] for v in detail["version_details"]}
    assert states == {"1": "READY", "2": "FAILED"}
    assert detail["state"] == "FAILED"  # the default (highest) version is the broken one
    ok = zoo.post("/v1/models/half-broken/versions/1/predict", json={"instance": [1, 2]})
    assert ok.status_code == 200
    assert ok.json()["predictions"] == [{"y": [2.0, 4.0]}]
    broken = zoo.post("/v1/models/half-broken/versions/2/predict", json={"instance": [1, 2]})
    assert broken.status_code == 503
    detail = broken.json()["detail"]
    assert "ImportError" in detail
    assert "no such dependency" not in detail  # the exception's text stays in the log


def test_model_detail_has_signature_labels_batching_and_versions(zoo: httpx.Client) -> None:
    detail = zoo.get("/v1/models/digits").json()
    assert detail["state"] == "READY"
    assert detail["default_version"] == "2"
    assert detail["versions"] == ["1", "2"]
    assert detail["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [64]}]
    assert {o["name"] for o in detail["outputs"]} == {"label", "probabilities"}
    assert detail["labels"] == [str(d) for d in range(10)]
    assert detail["batching"] == {
        "max_batch_size": 64,
        "max_batch_delay_ms": 0.0,
        "max_queue_size": 1024,
        "instances": 1,
    }
    runtimes = {v["version"]: v["runtime"] for v in detail["version_details"]}
    assert runtimes == {"1": "sklearn", "2": "onnx"}


def test_versions_sort_numerically_and_default_is_highest(zoo: httpx.Client) -> None:
    detail = zoo.get("/v1/models/versioned").json()
    assert detail["versions"] == ["1", "2", "10"]
    assert detail["default_version"] == "10"
    response = zoo.post("/v1/models/versioned/predict", json={"instance": [1, 1]})
    assert response.headers["X-Model-Version"] == "10"


def test_unknown_model_detail_is_404(zoo: httpx.Client) -> None:
    response = zoo.get("/v1/models/nope")
    assert response.status_code == 404
    assert response.json()["code"] == "MODEL_NOT_FOUND"


def test_an_onnx_model_without_a_signature_serves_its_graphs(zoo: httpx.Client) -> None:
    v2 = zoo.get("/v2/models/graph-signature").json()
    assert v2["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert v2["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
    ]
    v1 = zoo.get("/v1/models/graph-signature").json()
    assert v1["state"] == "READY"
    assert v1["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [64]}]
    assert v1["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": []},
        {"name": "probabilities", "datatype": "FP32", "shape": [10]},
    ]
    row = [0, 0, 5, 13, 9, 1, 0, 0] * 8
    same = zoo.post("/v1/models/digits/predict", json={"instance": row}).json()
    graph = zoo.post("/v1/models/graph-signature/predict", json={"instance": row})
    assert graph.status_code == 200, graph.text
    assert graph.json()["predictions"][0]["class_id"] == same["predictions"][0]["class_id"]


def test_declared_outputs_override_the_graphs(zoo: httpx.Client) -> None:
    detail = zoo.get("/v1/models/graph-outputs").json()
    assert detail["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [64]}]
    assert detail["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [10]}]
    answer = zoo.post("/v1/models/graph-outputs/predict", json={"instance": [0] * 64}).json()
    assert set(answer["predictions"][0]) == {"probabilities"}


def test_a_classification_output_the_graph_lacks_fails_the_load(zoo: httpx.Client) -> None:
    detail = zoo.get("/v1/models/graph-no-scores").json()
    assert detail["state"] == "FAILED"
    assert "classification.output 'scores' is not an output" in detail["reason"]
    assert "'probabilities'" in detail["reason"]

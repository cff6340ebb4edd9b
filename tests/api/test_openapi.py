from __future__ import annotations

import httpx


def test_openapi_documents_routes_bodies_and_problems(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    for path in (
        "/healthz",
        "/readyz",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/models/{model}/predict",
        "/v1/models/{model}/versions/{version}/predict",
        "/v1/classify",
    ):
        assert path in paths
    predict = paths["/v1/models/{model}/predict"]["post"]
    content = predict["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    for status in ("413", "415", "422", "404", "503", "504", "500"):
        problem = predict["responses"][status]["content"]["application/problem+json"]
        assert problem["schema"]["$ref"] == "#/components/schemas/Problem"
    schemas = document["components"]["schemas"]
    assert {"Problem", "PredictRequest", "ClassifyRequest", "ClassifyResponse"} <= set(schemas)
    headers = {p["name"] for p in predict["parameters"]}
    assert {"model", "X-Response-Detail", "X-Request-Timeout-Ms"} <= headers
    versioned = paths["/v1/models/{model}/versions/{version}/predict"]["post"]
    path_params = {p["name"] for p in versioned["parameters"] if p["in"] == "path"}
    assert path_params == {"model", "version"}


def test_interactive_docs(client: httpx.Client) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert "swagger" in response.text.lower()

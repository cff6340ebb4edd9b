from __future__ import annotations

import re

import httpx

from modelplex.error_map import rows


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
    assert {"PredictForm", "ClassifyForm", "JobSubmitForm", "BatchForm", "V2InferRequest"} <= set(
        schemas
    )
    headers = {p["name"] for p in predict["parameters"]}
    assert {"model", "X-Response-Detail", "X-Request-Timeout-Ms"} <= headers
    versioned = paths["/v1/models/{model}/versions/{version}/predict"]["post"]
    path_params = {p["name"] for p in versioned["parameters"] if p["in"] == "path"}
    assert path_params == {"model", "version"}


def test_interactive_docs(client: httpx.Client) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert "swagger" in response.text.lower()


def test_the_document_is_valid_openapi(client: httpx.Client) -> None:
    from openapi_spec_validator import validate

    document = client.get("/openapi.json").json()
    validate(document)
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # modelplex never answers with FastAPI's shape
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)


def test_every_error_code_is_in_the_document(client: httpx.Client) -> None:
    description = client.get("/openapi.json").json()["info"]["description"]
    for error_class, wire in rows():
        assert f"| `{wire.code}` | {wire.http_status} | {wire.v2_status} |" in description, (
            error_class
        )


def test_protocol_errors_are_documented_in_the_protocol_shape(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    infer = paths["/v2/models/{model}/versions/{version}/infer"]["post"]["responses"]
    assert infer["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/V2Error")
    assert "404" in infer
    ready = paths["/v2/health/ready"]["get"]["responses"]
    assert ready["200"]["content"] == {}  # an empty body, as the protocol answers


def test_credentials_are_declared_with_401_and_403_on_every_protected_operation(
    client: httpx.Client,
) -> None:
    document = client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {**schemes["ApiKey"], "type": "apiKey", "in": "header",
                                 "name": "X-API-Key"}  # fmt: skip
    assert schemes["Bearer"]["scheme"] == "bearer"
    open_paths = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path in open_paths:
                assert "security" not in operation, (method, path)
                continue
            assert operation["security"] == [{"ApiKey": []}, {"Bearer": []}], (method, path)
            assert {"401", "403"} <= set(operation["responses"]), (method, path)

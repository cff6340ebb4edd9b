"""`modelplex.oip.service.V2Service`: the protocol's operations over a real data plane."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits

import modelplex
from modelplex.core.tensors import Array, Datatype
from modelplex.errors import (
    InferenceTimeout,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    VersionNotFound,
)
from modelplex.oip.service import (
    CONFIG_TYPES,
    EXTENSIONS,
    RequestedOutput,
    V2Request,
    V2Response,
    V2Service,
    V2Tensor,
)
from tests.oip.harness import ANIMALS, build_repo, open_service

pytestmark = pytest.mark.anyio

DIGITS = load_digits(return_X_y=True)[0][1500:1503].astype(np.float32)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def repo(example_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repo(tmp_path_factory.mktemp("oip") / "repo", example_repo)


@pytest.fixture
async def service(repo: Path, tmp_path: Path) -> AsyncIterator[V2Service]:
    async with open_service(repo, tmp_path) as opened:
        yield opened


def tensor(name: str, data: Array) -> V2Tensor:
    return V2Tensor(name, Datatype.from_numpy(data.dtype), data.shape, data)


def doubler_request(model: str = "doubler", **fields: Any) -> V2Request:
    """Two instances of x: FP32[2] for any model with the doubler's signature."""
    x = np.array([[1.0, 2.0], [3.0, -4.0]], dtype=np.float32)
    return V2Request(model=model, version=None, inputs=[tensor("x", x)], **fields)


def outputs_of(response: V2Response) -> dict[str, V2Tensor]:
    return {t.name: t for t in response.outputs}


# -- health and metadata -------------------------------------------------------


async def test_server_metadata_and_readiness(service: V2Service) -> None:
    assert service.server_metadata() == {
        "name": "modelplex",
        "version": modelplex.__version__,
        "extensions": list(EXTENSIONS),
    }
    assert set(EXTENSIONS) >= {"binary_tensor_data", "classification", "model_repository"}
    assert service.server_ready() is True


async def test_model_metadata_names_versions_and_platform(service: V2Service) -> None:
    assert service.model_metadata("digits", None) == {
        "name": "digits",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        ],
    }
    assert service.model_metadata("digits", "1")["platform"] == "sklearn"
    assert service.model_metadata("digits", "2")["platform"] == "onnxruntime_onnx"
    doubler = service.model_metadata("doubler", None)
    assert doubler["platform"] == "python"
    assert doubler["versions"] == ["1", "2"]


async def test_model_metadata_errors(service: V2Service) -> None:
    with pytest.raises(ModelNotFound):
        service.model_metadata("nope", None)
    with pytest.raises(VersionNotFound):
        service.model_metadata("digits", "7")
    with pytest.raises(ModelNotReady):
        service.model_metadata("broken", None)


async def test_model_ready(service: V2Service) -> None:
    assert service.model_ready("digits", None) is True
    assert service.model_ready("digits", "1") is True
    assert service.model_ready("digits", "2") is True
    assert service.model_ready("broken", None) is False
    with pytest.raises(VersionNotFound) as caught:
        service.model_ready("digits", "7")
    assert caught.value.message == "model 'digits' has no version '7'"
    with pytest.raises(ModelNotFound):
        service.model_ready("nope", None)


# -- inference -----------------------------------------------------------------


async def test_infer_digits_returns_what_the_model_computes(repo: Path, service: V2Service) -> None:
    session = ort.InferenceSession(
        str(repo / "digits" / "2" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    labels, probabilities = session.run(["label", "probabilities"], {"pixels": DIGITS})
    request = V2Request("digits", None, [tensor("pixels", DIGITS)], id="req-1")
    response = await service.infer(request)
    assert (response.model, response.version, response.id) == ("digits", "2", "req-1")
    assert [t.name for t in response.outputs] == ["label", "probabilities"]
    out = outputs_of(response)
    assert out["label"].datatype is Datatype.INT64
    assert out["label"].shape == (3,)
    assert out["label"].data.tolist() == labels.tolist()
    assert out["probabilities"].datatype is Datatype.FP32
    assert out["probabilities"].shape == (3, 10)
    np.testing.assert_allclose(out["probabilities"].data, probabilities, rtol=1e-5, atol=1e-7)


async def test_infer_a_named_version(service: V2Service) -> None:
    onnx = await service.infer(V2Request("digits", "2", [tensor("pixels", DIGITS)]))
    sklearn = await service.infer(V2Request("digits", "1", [tensor("pixels", DIGITS)]))
    assert (onnx.version, sklearn.version) == ("2", "1")
    # The same pipeline, converted: the same digits with (nearly) the same probabilities.
    assert outputs_of(sklearn)["label"].data.tolist() == outputs_of(onnx)["label"].data.tolist()
    np.testing.assert_allclose(
        outputs_of(sklearn)["probabilities"].data,
        outputs_of(onnx)["probabilities"].data,
        atol=1e-4,
    )


async def test_infer_python_model(service: V2Service) -> None:
    response = await service.infer(doubler_request())
    assert response.version == "2"
    (y,) = response.outputs
    assert (y.name, y.datatype, y.shape) == ("y", Datatype.FP32, (2, 2))
    assert y.data.tolist() == [[2.0, 4.0], [6.0, -8.0]]


async def test_requested_outputs_subset(service: V2Service) -> None:
    request = V2Request(
        "digits", None, [tensor("pixels", DIGITS)], outputs=[RequestedOutput("probabilities")]
    )
    response = await service.infer(request)
    assert [t.name for t in response.outputs] == ["probabilities"]
    assert response.outputs[0].shape == (3, 10)


async def test_unknown_requested_output(service: V2Service) -> None:
    request = V2Request(
        "digits", None, [tensor("pixels", DIGITS)], outputs=[RequestedOutput("nope")]
    )
    with pytest.raises(InvalidInput) as caught:
        await service.infer(request)
    assert (
        caught.value.message == "unknown outputs ['nope']; the model has ['label', 'probabilities']"
    )


async def test_a_duplicate_input_name_is_refused(service: V2Service) -> None:
    x = np.ones((1, 2), dtype=np.float32)
    request = V2Request("doubler", None, [tensor("x", x), tensor("x", x * 3)])
    with pytest.raises(InvalidInput) as caught:
        await service.infer(request)
    assert caught.value.message == "an input is given twice"


async def test_the_validator_speaks_for_bad_inputs(service: V2Service) -> None:
    request = V2Request("digits", None, [tensor("pixels", DIGITS[:, :63])])
    with pytest.raises(InvalidInput) as caught:
        await service.infer(request)
    assert caught.value.message == (
        "input 'pixels' has shape [3, 63], instances of shape [63]; "
        "the model takes instances of shape [64]"
    )


async def test_infer_unknown_model_or_version(service: V2Service) -> None:
    with pytest.raises(ModelNotFound):
        await service.infer(doubler_request(model="nope"))
    with pytest.raises(VersionNotFound):
        await service.infer(V2Request("doubler", "9", doubler_request().inputs))


# -- the classification extension ----------------------------------------------


def classify(k: Any, output: str = "scores") -> V2Request:
    x = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.125]], dtype=np.float32)
    return V2Request(
        "animals", None, [tensor("x", x)], outputs=[RequestedOutput(output, {"classification": k})]
    )


async def test_classification_gives_score_index_label_strings(service: V2Service) -> None:
    response = await service.infer(classify(2))
    (scores,) = response.outputs
    assert scores.name == "scores"
    assert scores.datatype is Datatype.BYTES
    assert scores.shape == (2, 2)
    assert scores.parameters == {"classification": 2}
    assert scores.data.tolist() == [
        [b"0.700000:1:dog", b"0.200000:2:bird"],
        [b"0.500000:0:cat", b"0.250000:1:dog"],
    ]


async def test_classification_count_is_capped_at_the_classes(service: V2Service) -> None:
    response = await service.infer(classify(50))
    (scores,) = response.outputs
    assert scores.shape == (2, len(ANIMALS))
    assert scores.data.tolist() == [
        [b"0.700000:1:dog", b"0.200000:2:bird", b"0.100000:0:cat"],
        [b"0.500000:0:cat", b"0.250000:1:dog", b"0.125000:2:bird"],
    ]


async def test_classification_next_to_a_plain_output(service: V2Service) -> None:
    request = classify(1)
    assert request.outputs is not None
    request.outputs.append(RequestedOutput("total"))
    out = outputs_of(await service.infer(request))
    assert out["scores"].data.tolist() == [[b"0.700000:1:dog"], [b"0.500000:0:cat"]]
    assert out["total"].datatype is Datatype.FP32
    np.testing.assert_allclose(out["total"].data, [1.0, 0.875], rtol=1e-6)


async def test_classification_of_digits_matches_the_probabilities(service: V2Service) -> None:
    plain = await service.infer(V2Request("digits", None, [tensor("pixels", DIGITS)]))
    probabilities = outputs_of(plain)["probabilities"].data
    request = V2Request(
        "digits",
        None,
        [tensor("pixels", DIGITS)],
        outputs=[RequestedOutput("probabilities", {"classification": 3})],
    )
    (classes,) = (await service.infer(request)).outputs
    expected = [
        [f"{float(row[i]):f}:{i}:{i}".encode() for i in np.argsort(-row, kind="stable")[:3]]
        for row in probabilities
    ]
    assert classes.data.tolist() == expected


async def test_classification_of_an_output_that_is_not_the_classifiers(
    service: V2Service,
) -> None:
    with pytest.raises(InvalidInput) as caught:
        await service.infer(classify(1, output="total"))
    assert caught.value.message == "output 'total' does not hold class scores"


@pytest.mark.parametrize("k", [True, 1.5, "2"])
async def test_classification_count_must_be_an_integer(service: V2Service, k: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        await service.infer(classify(k))
    assert caught.value.message == "the classification parameter must be a positive integer"


@pytest.mark.parametrize("k", [0, -3])
async def test_classification_count_must_be_positive(service: V2Service, k: int) -> None:
    with pytest.raises(InvalidInput) as caught:
        await service.infer(classify(k))
    assert caught.value.message == "top_k (classes per instance) must be a positive integer"


# -- the timeout parameter -------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "1000"])
async def test_timeout_parameter_is_validated(service: V2Service, value: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        await service.infer(doubler_request(parameters={"timeout": value}))
    assert caught.value.message == (
        "the timeout parameter must be a positive number of microseconds"
    )


@pytest.mark.parametrize(
    ("microseconds", "transport_ms", "expected_ms"),
    [
        (5_000_000, None, 5000),  # microseconds become milliseconds
        (5_000_000, 3000, 3000),  # the transport's tighter deadline wins
        (2_000_000, 3000, 2000),  # the parameter's tighter deadline wins
        (999, None, 1),  # never rounded down to no time at all
    ],
)
async def test_timeout_parameter_sets_the_request_deadline(
    service: V2Service, microseconds: int, transport_ms: int | None, expected_ms: int
) -> None:
    request = doubler_request(model="nope", parameters={"timeout": microseconds})
    request.timeout_ms = transport_ms
    with pytest.raises(ModelNotFound):  # the deadline is settled before the model is found
        await service.infer(request)
    assert request.timeout_ms == expected_ms


async def test_timeout_parameter_applies_to_the_inference(service: V2Service) -> None:
    request = doubler_request(model="slow", parameters={"timeout": 200_000})
    with pytest.raises(InferenceTimeout) as caught:
        await service.infer(request)
    assert caught.value.message == "model 'slow' version '1' did not answer within 200 ms"


# -- configuration, statistics, repository -------------------------------------


async def test_model_config_in_tritons_shape(service: V2Service) -> None:
    assert service.model_config("digits", None) == {
        "name": "digits",
        "platform": "onnxruntime_onnx",
        "backend": "onnx",
        "max_batch_size": 64,
        "input": [{"name": "pixels", "data_type": "TYPE_FP32", "dims": [64]}],
        "output": [
            {"name": "label", "data_type": "TYPE_INT64", "dims": []},
            {
                "name": "probabilities",
                "data_type": "TYPE_FP32",
                "dims": [10],
                "label_filename": "labels.txt",
            },
        ],
        "instance_group": [{"name": "digits", "kind": "KIND_CPU", "count": 1}],
        "dynamic_batching": {"max_queue_delay_microseconds": 0},
        "default_model_filename": "model.onnx",
    }
    sklearn = service.model_config("digits", "1")
    assert (sklearn["platform"], sklearn["backend"]) == ("sklearn", "sklearn")
    assert sklearn["default_model_filename"] == "model.joblib"


async def test_model_config_of_a_batching_python_model(service: V2Service) -> None:
    config = service.model_config("doubler", "1")
    assert config["platform"] == "python"
    assert config["max_batch_size"] == 8
    assert config["instance_group"] == [{"name": "doubler", "kind": "KIND_CPU", "count": 2}]
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 5000}
    assert config["default_model_filename"] == "model.py"
    assert all("label_filename" not in output for output in config["output"])
    animals = service.model_config("animals", None)
    assert [o.get("label_filename") for o in animals["output"]] == ["labels.txt", None]


def test_config_types_name_every_datatype() -> None:
    assert set(CONFIG_TYPES) == set(Datatype)
    assert CONFIG_TYPES[Datatype.BYTES] == "TYPE_STRING"
    assert CONFIG_TYPES[Datatype.FP16] == "TYPE_FP16"


async def test_model_statistics_count_inferences(service: V2Service) -> None:
    await service.infer(V2Request("digits", "2", [tensor("pixels", DIGITS)]))
    stats = {s["version"]: s for s in service.model_statistics("digits", None)["model_stats"]}
    assert set(stats) == {"1", "2"}
    used, idle = stats["2"], stats["1"]
    assert used["name"] == "digits"
    assert used["inference_count"] == 3
    assert used["execution_count"] == 1
    assert used["last_inference"] > 0
    assert used["inference_stats"]["success"]["count"] == 1
    assert used["inference_stats"]["fail"] == {"count": 0, "ns": 0}
    assert used["inference_stats"]["compute_infer"]["count"] == 1
    assert [b["batch_size"] for b in used["batch_stats"]] == [3]
    assert used["batch_stats"][0]["compute_infer"]["count"] == 1
    assert (idle["inference_count"], idle["execution_count"], idle["last_inference"]) == (0, 0, 0)
    assert idle["batch_stats"] == []
    only = service.model_statistics("digits", "2")["model_stats"]
    assert [s["version"] for s in only] == ["2"]
    assert only[0]["inference_count"] == 3


async def test_a_failed_inference_is_counted(service: V2Service) -> None:
    with pytest.raises(InferenceTimeout):
        await service.infer(doubler_request(model="slow", parameters={"timeout": 100_000}))
    (stats,) = service.model_statistics("slow", "1")["model_stats"]
    assert stats["inference_stats"]["fail"]["count"] == 1
    assert stats["inference_stats"]["success"]["count"] == 0


async def test_model_statistics_of_every_model(service: V2Service) -> None:
    stats = service.model_statistics(None, None)["model_stats"]
    assert [(s["name"], s["version"]) for s in stats] == [
        ("animals", "1"),
        ("digits", "1"),
        ("digits", "2"),
        ("doubler", "1"),
        ("doubler", "2"),
        ("slow", "1"),
    ]


async def test_model_statistics_of_an_unknown_version(service: V2Service) -> None:
    with pytest.raises(VersionNotFound) as caught:
        service.model_statistics("digits", "9")
    assert caught.value.message == "model 'digits' has no loaded version '9'"
    with pytest.raises(ModelNotFound):
        service.model_statistics("nope", None)


async def test_repository_index(service: V2Service) -> None:
    index = service.repository_index(ready_only=False)
    assert [entry["name"] for entry in index] == ["animals", "broken", "digits", "doubler", "slow"]
    by_name = {entry["name"]: entry for entry in index}
    assert by_name["digits"] == {"name": "digits", "state": "READY", "version": "2"}
    assert by_name["animals"] == {"name": "animals", "state": "READY", "version": "1"}
    assert by_name["broken"]["state"] == "FAILED"
    assert "version" not in by_name["broken"]
    assert by_name["broken"]["reason"]
    ready = service.repository_index(ready_only=True)
    assert [entry["name"] for entry in ready] == ["animals", "digits", "doubler", "slow"]


async def test_load_refuses_parameters(service: V2Service) -> None:
    with pytest.raises(InvalidInput) as caught:
        await service.load("doubler", {"config": '{"max_batch_size": 2}'})
    assert caught.value.message == (
        "load parameters (config overrides, files) are not supported: "
        "put the files in the model's folder and load it"
    )
    assert service.model_ready("doubler", None) is True


async def test_load_of_a_model_not_in_the_repository(service: V2Service) -> None:
    with pytest.raises(ModelNotFound):
        await service.load("nope")


async def test_unload_then_load_again(service: V2Service) -> None:
    await service.unload("doubler")
    assert service.model_ready("doubler", None) is False
    entry = next(e for e in service.repository_index(False) if e["name"] == "doubler")
    assert entry == {"name": "doubler", "state": "UNAVAILABLE", "reason": "unloaded"}
    assert [e["name"] for e in service.repository_index(True)] == ["animals", "digits", "slow"]
    with pytest.raises(ModelNotReady):
        await service.infer(doubler_request())
    await service.load("doubler", {})  # empty parameters are no parameters
    assert service.model_ready("doubler", None) is True
    (y,) = (await service.infer(doubler_request())).outputs
    assert y.data.tolist() == [[2.0, 4.0], [6.0, -8.0]]


async def test_unload_of_an_unknown_model(service: V2Service) -> None:
    with pytest.raises(ModelNotFound):
        await service.unload("nope")

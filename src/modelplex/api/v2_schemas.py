"""The Open Inference Protocol's REST bodies: requests parsed with these classes, and
responses documented by them (shapes from the protocol's specification).

The protocol lets extensions add fields, so unknown fields are ignored here,
unlike on /v1. Tensor `data` stays `Any`: the codec decodes it against the
tensor's own datatype and shape.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from modelplex.core.envelopes import JsonInt


class _V2(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class V2Error(BaseModel):
    """Every error on /v2: the protocol's error object."""

    error: str


class V2RequestInput(_V2):
    name: str
    datatype: str
    shape: list[JsonInt]
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data_size`: the tensor is in the body after the JSON."
    )
    data: Any = Field(None, description="Row-major values, flat or nested (unless binary).")


class V2RequestOutput(_V2):
    name: str
    parameters: dict[str, Any] | None = Field(
        None, description="`binary_data` (bool), `classification` (classes per instance)."
    )


class V2InferRequest(_V2):
    """The inference request (with Triton's binary extension, this JSON is followed by
    the binary tensors; `Inference-Header-Content-Length` says where it ends)."""

    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] | None = Field(
        None, description="`timeout` (microseconds), `binary_data_output` (bool)."
    )
    inputs: list[V2RequestInput]
    outputs: list[V2RequestOutput] | None = None

    @field_validator("inputs", mode="before")
    @classmethod
    def _some_inputs(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError("must be a non-empty list")
        return value


class V2ResponseOutput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(None, description="Absent when the output is binary.")


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2ResponseOutput]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2RepositoryModel(BaseModel):
    name: str
    version: str | None = None
    state: str
    reason: str | None = None


class V2RepositoryIndexRequest(_V2):
    ready: bool = Field(False, description="Only models that are ready.")

    @field_validator("ready", mode="before")
    @classmethod
    def _strict_bool(cls, value: Any) -> Any:
        if not isinstance(value, bool):  # a typo must not flip a flag
            raise ValueError("must be true or false")
        return value


class V2LoadRequest(_V2):
    parameters: dict[str, Any] | None = Field(
        None, description="Refused when given: a model's folder is its only source."
    )

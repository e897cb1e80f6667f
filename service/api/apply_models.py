"""The wire schemas of POST /apply. The tensor itself is decoded by service.codecs, not pydantic."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, Tag

from service.dataplane import Engine
from service.layers.spec import KerasLayerConfig, LayerCreate, Seed


def _spec_kind(value: Any) -> str:
    return "keras" if isinstance(value, dict) and "class_name" in value else "spec"


InlineSpec = Annotated[
    Annotated[LayerCreate, Tag("spec")] | Annotated[KerasLayerConfig, Tag("keras")],
    Discriminator(_spec_kind),
]


class ApplyEnvelope(BaseModel):
    """Everything of a JSON /apply request but the tensor (validated apart, at C speed)."""

    model_config = ConfigDict(extra="forbid")

    layer: str | None = Field(default=None, description="A stored layer's id or name.")
    spec: InlineSpec | None = Field(
        default=None, description="An inline layer spec (or Keras config), instead of `layer`."
    )
    training: StrictBool = Field(default=False, description="Drop feature maps (else identity).")
    seed: Seed | None = Field(
        default=None,
        description="Seed of the mask; default: the layer's seed, else one the server draws.",
    )
    sample_offset: Annotated[int, Field(ge=0, lt=2**62, strict=True)] = Field(
        default=0, description="Index of the first sample in the whole batch (for split batches)."
    )
    return_mask: StrictBool = Field(
        default=False, description="Also answer the samples x channels keep mask."
    )
    dtype: Literal["float16", "float32", "float64", "bfloat16"] | None = Field(
        default=None, description="dtype of a nested-list input (default float32)."
    )
    engine: Engine = Field(
        default="numpy",
        description="numpy (the kernel), or onnxruntime (the layer's exported ONNX graph; "
        "same answer, no bfloat16).",
    )


class FlatTensor(BaseModel):
    """A tensor as shape, dtype and the row-major flat list of its values."""

    shape: list[Annotated[int, Field(ge=0)]]
    dtype: Literal["float16", "float32", "float64", "bfloat16"] = "float32"
    data: list[float]


class ApplyRequest(ApplyEnvelope):
    """A JSON /apply request."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "layer": "sd",
                    "training": True,
                    "seed": 7,
                    "input": {
                        "shape": [1, 2, 2, 3],
                        "dtype": "float32",
                        "data": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
                    },
                    "return_mask": True,
                }
            ]
        }
    )

    input: FlatTensor | list[Any] = Field(
        description="The tensor: nested lists, or {shape, dtype, data}."
    )


class ApplyResponse(BaseModel):
    """The answer of a JSON /apply request; `output` has the form the input had."""

    output: FlatTensor | list[Any]
    seed: int = Field(description="The seed used: replay the call with it.")
    training: bool
    layer: str | None = Field(
        description="The stored layer's name; for an inline `spec`, its own `name`, or null "
        "when it has none (nothing is stored, so no name is generated)."
    )
    mask: list[Any] | None = Field(
        default=None, description="samples x channels, true = kept; only with return_mask."
    )


class NpyQuery(BaseModel):
    """The query parameters of a .npy /apply request (a JSON request carries them in its body).

    Validated by pydantic directly rather than as FastAPI parameters: FastAPI's per-parameter
    machinery cost more than the whole dropout of a small tensor.
    """

    model_config = ConfigDict(extra="ignore")

    layer: str | None = Field(
        default=None, description=".npy form only: the stored layer's id or name."
    )
    training: bool = Field(default=False, description=".npy form only: training mode.")
    seed: Annotated[int, Field(ge=0, lt=2**64)] | None = Field(
        default=None, description=".npy form only: the seed."
    )
    sample_offset: Annotated[int, Field(ge=0, lt=2**62)] = Field(
        default=0, description=".npy form only: first sample's index."
    )
    engine: Engine = Field(
        default="numpy", description=".npy form only: numpy, or onnxruntime (the ONNX graph)."
    )


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI ``parameters`` (all optional, in the query) for the fields of ``model``."""
    schema = model.model_json_schema()
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": prop,
            "description": prop.get("description", ""),
        }
        for name, prop in schema["properties"].items()
    ]

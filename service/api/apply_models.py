"""The wire schemas of POST /apply, from the shared parameter types (service.params).

The request models are what the endpoint validates with; the answer is typed by
``ApplyResponse``. The tensor itself is decoded by service.codecs.json_tensor, not pydantic
(at C speed): its schema here states the two forms that codec reads.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, NotRequired

from pydantic import BaseModel, ConfigDict, Field, StrictBool, WithJsonSchema
from typing_extensions import TypedDict

from service.layers.spec import LayerBody
from service.params import (
    DTYPE_NAMES,
    FROM_TEXT,
    Engine,
    SampleOffset,
    Seed,
    TensorDtype,
    Training,
)

#: The tensor forms service.codecs.json_tensor decodes (and answers in).
TENSOR_SCHEMA: Final[dict[str, Any]] = {
    "description": "The tensor: nested lists of numbers, or {shape, dtype, data}.",
    "anyOf": [
        {
            "type": "object",
            "title": "FlatTensor",
            "description": "A tensor as shape, dtype and the row-major flat list of its values.",
            "properties": {
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "dtype": {"enum": list(DTYPE_NAMES), "default": "float32"},
                "data": {"type": "array", "items": {"type": "number"}},
            },
            "required": ["shape", "data"],
            "additionalProperties": False,
        },
        {"type": "array", "title": "Nested lists"},
    ],
}
Tensor = Annotated[Any, WithJsonSchema(TENSOR_SCHEMA)]

_EXAMPLE: Final[dict[str, Any]] = {
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


class ApplyRequest(BaseModel):
    """A JSON /apply request."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})

    layer: str | None = Field(default=None, description="A stored layer's id or name.")
    spec: LayerBody | None = Field(
        default=None, description="An inline layer spec (or Keras config), instead of `layer`."
    )
    training: Training = False
    seed: Seed | None = Field(
        default=None,
        description="Seed of the mask; default: the layer's seed, else one the server draws.",
    )
    sample_offset: SampleOffset = 0
    return_mask: StrictBool = Field(
        default=False, description="Also answer the samples x channels keep mask."
    )
    dtype: TensorDtype | None = Field(
        default=None, description="dtype of a nested-list input (default float32)."
    )
    engine: Engine = "numpy"
    input: Tensor


class ApplyResponse(TypedDict):
    """The answer of a JSON /apply request; `output` has the form the input had."""

    output: Annotated[Any, WithJsonSchema(TENSOR_SCHEMA)]
    seed: Annotated[int, Field(description="The seed used: replay the call with it.")]
    training: bool
    layer: Annotated[
        str | None,
        Field(
            description="The stored layer's name; for an inline `spec`, its own `name`, or "
            "null when it has none (nothing is stored, so no name is generated)."
        ),
    ]
    mask: NotRequired[
        Annotated[
            Any,
            WithJsonSchema(
                {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "boolean"}},
                    "description": "samples x channels, true = kept; only with return_mask.",
                }
            ),
        ]
    ]


class NpyQuery(BaseModel):
    """The query parameters of a .npy /apply request (a JSON request carries them in its body).

    Validated with ``model_validate_strings``: query values are text. Frozen, because one
    parse serves every request with the same query string.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    layer: str | None = Field(
        default=None, description=".npy form only: the stored layer's id or name."
    )
    training: Annotated[Training, FROM_TEXT] = Field(
        default=False, description=".npy form only: training mode."
    )
    seed: Annotated[Seed, FROM_TEXT] | None = Field(
        default=None, description=".npy form only: the seed."
    )
    sample_offset: Annotated[SampleOffset, FROM_TEXT] = Field(
        default=0, description=".npy form only: first sample's index."
    )
    engine: Engine = Field(
        default="numpy", description=".npy form only: numpy, or onnxruntime (the ONNX graph)."
    )

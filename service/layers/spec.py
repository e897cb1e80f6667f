"""The wire schemas of a layer: what a client sends to create one, and what it gets back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    Tag,
)

from service.core.bounds import MAX_RANK, Dim
from service.core.config import DataFormat, Kind
from service.layers import schema
from service.params import INTEGRAL, Seed

Rate = StrictFloat | StrictInt


class LayerCreate(BaseModel):
    """A layer spec as a client posts it: every argument of R keras 2.9 and Keras 3."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=schema.layer_create)

    kind: Kind = Kind.SPATIAL_2D
    rate: Rate = Field(description="Fraction of feature maps to drop, 0 <= rate <= 1.")
    data_format: str | None = Field(
        default=None,
        description="channels_last or channels_first (any case); null takes the server's default.",
    )
    batch_size: Annotated[Dim, INTEGRAL] | None = Field(
        default=None, description="When set, inputs must have exactly this many samples."
    )
    name: str | None = Field(
        default=None, description="Unique name; generated Keras-style when absent."
    )
    trainable: StrictBool = True
    weights: list[Any] | None = Field(
        default=None, description="Dropout has no weights: only null or [] is accepted."
    )
    seed: Seed | None = Field(default=None, description="Default seed of /apply calls.")
    dtype: str | None = Field(
        default=None, description="Keras dtype policy name, kept for the Keras round trip."
    )
    noise_shape: list[Annotated[Dim, INTEGRAL] | None] | None = Field(
        default=None,
        max_length=MAX_RANK,
        description="dropout only: the mask's shape; null entries take the input's size.",
    )


class KerasLayerConfig(BaseModel):
    """A Keras layer as ``keras.layers.serialize`` (Keras 3) or tf.keras 2 writes it."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=schema.keras_config)

    module: str | None = None
    class_name: Literal["Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D"]
    config: dict[str, Any]
    registered_name: str | None = None


def is_keras_config(value: object) -> bool:
    """Whether a posted layer is a Keras config (it names a class) rather than a spec."""
    return isinstance(value, dict) and "class_name" in value


def _layer_kind(value: object) -> str:
    return "keras" if is_keras_config(value) else "spec"


#: A layer as a client posts it: a spec, or a Keras config (Keras 3 or tf.keras 2).
LayerBody = Annotated[
    Annotated[LayerCreate, Tag("spec")] | Annotated[KerasLayerConfig, Tag("keras")],
    Discriminator(_layer_kind),
]


class Layer(BaseModel):
    """A stored layer: the spec, resolved, with its id and creation time."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    kind: Kind
    rate: float
    data_format: DataFormat | None = Field(
        description="Resolved at creation; null for dropout, which has no channel axis."
    )
    batch_size: int | None
    trainable: bool
    weights: list[Any] = Field(default_factory=list, description="Always empty.")
    seed: int | None
    dtype: str | None
    noise_shape: list[int | None] | None
    created_at: datetime


class LayerPage(BaseModel):
    """One page of ``GET /layers``, oldest first."""

    items: list[Layer]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= to get the next page; null on the last page."
    )


class KerasSerialized(BaseModel):
    """The Keras 3 serialized form that ``keras.layers.deserialize`` accepts."""

    module: Literal["keras.layers"] = "keras.layers"
    class_name: str
    config: dict[str, Any]
    registered_name: None = None

"""The record of inserted layers that a composed model carries in its ``metadata_props``.

One key, ``spatial_dropout.layers``, holds a JSON object::

    {"version": 1,
     "layers": [{"index": 0, "tensor": "logits", "insertion": 0, "seed": 7,
                 "stream_seed": 1234567, "layer": {...the layer's spec...},
                 "prefix": "spatial_dropout_0/", "mask": "dropout",
                 "dropout": "spatial_dropout_0/Dropout_3",
                 "mask_node": "spatial_dropout_0/Dropout_3",
                 "platform": {"runtime": "onnxruntime", "provider": "CPUExecutionProvider",
                              "operator": "Dropout", "os": "linux",
                              "engine": "libstdc++ std::default_random_engine (minstd_rand0)"}},
                ...]}

``layers`` lists every inserted layer in insertion order over all compositions (``index`` is
its position: K = len(layers) is the number of inserted layers), ``tensor`` the tensor it
follows, ``insertion`` its position i in the composing call's ``after`` (its ``seed`` is that
call's seed + i, mod 2**64), ``stream_seed`` the Dropout's ``seed`` attribute
(``rng.mix_seed(seed)``), ``mask`` the form its keep mask takes (``dropout``: the Dropout
operator; ``portable``: the stream computed in the graph), ``dropout`` the Dropout node's name
(null in the portable form, and at rate 0 or 1, which draw nothing), ``mask_node`` the node
whose output is the keep mask in either form (null when nothing is drawn), ``prefix`` the start
of every name the insertion added, and ``platform`` where the stream is bit-exact with
``/apply``. Composing again appends; a record written before ``mask`` existed reads as the
Dropout form.
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal

import onnx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.errors import InvalidModel
from service.params import MaskForm

RECORD_KEY: Final = "spatial_dropout.layers"
RECORD_VERSION: Final = 1


class Platform(BaseModel):
    """Where the inserted Dropout draws the stream ``/apply`` draws (elsewhere: other masks)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    runtime: str = "onnxruntime"
    provider: str = "CPUExecutionProvider"
    operator: str = "Dropout"
    os: str = "linux"
    engine: str = "libstdc++ std::default_random_engine (minstd_rand0)"


#: Where a portable layer's mask is /apply's: anywhere its graph runs as ONNX specifies.
PORTABLE: Final = Platform(
    runtime="any", provider="any", operator="none", os="any", engine="minstd_rand0, in the graph"
)


class InsertedLayer(BaseModel):
    """One inserted layer, as the record keeps it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    tensor: str
    insertion: int = Field(ge=0)
    seed: int = Field(ge=0, lt=2**64)
    stream_seed: int = Field(ge=1, lt=2**31 - 1)
    layer: dict[str, Any]
    prefix: str
    mask: MaskForm = "dropout"
    dropout: str | None
    mask_node: str | None = None
    platform: Platform = Field(default_factory=Platform)

    @property
    def drawing_node(self) -> str | None:
        """The node whose output is the keep mask (records without ``mask_node`` name their
        Dropout)."""
        return self.mask_node or self.dropout


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    layers: list[InsertedLayer]


def read_record(model: onnx.ModelProto) -> list[InsertedLayer]:
    """The layers inserted into ``model`` (empty for a model never composed).

    Raises InvalidModel when the key is there but holds no record this service reads.
    """
    values = [entry.value for entry in model.metadata_props if entry.key == RECORD_KEY]
    if not values:
        return []
    if len(values) > 1:
        raise InvalidModel(f"The model's metadata_props has {RECORD_KEY!r} more than once.")
    try:
        record = _Record.model_validate_json(values[0])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidModel(
            f"The model's metadata_props {RECORD_KEY!r} is not a record of inserted layers "
            f"(version {RECORD_VERSION}): {where or 'the value'}: {first['msg']}."
        ) from None
    if [layer.index for layer in record.layers] != list(range(len(record.layers))):
        raise InvalidModel(
            f"The model's metadata_props {RECORD_KEY!r} numbers its layers out of order."
        )
    return record.layers


def write_record(model: onnx.ModelProto, layers: list[InsertedLayer]) -> None:
    """Set the record to ``layers``, keeping every other metadata entry where it was."""
    value = json.dumps(
        {
            "version": RECORD_VERSION,
            "layers": [layer.model_dump(mode="json") for layer in layers],
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    for entry in model.metadata_props:
        if entry.key == RECORD_KEY:
            entry.value = value
            return
    model.metadata_props.add(key=RECORD_KEY, value=value)

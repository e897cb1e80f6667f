"""What ``service.layers.resolve`` accepts, stated in JSON Schema for the OpenAPI document.

pydantic states the field types of a posted layer; Keras's checks (a rate in [0, 1], the data
formats each kind takes, noise_shape for dropout only, the keys and values of a Keras config)
live in ``resolve``. The constants both use are defined here once, and the statements below
follow ``resolve``'s checks one for one, so that the document admits exactly what the service
creates. A name's rules over Unicode categories are the one check the document cannot state.
"""

from __future__ import annotations

from typing import Any, Final

from service.core.config import DataFormat, Kind
from service.core.dtypes import DTYPES

#: Keras dtype policies we recognise; the layer keeps the name, inputs keep their own dtype.
DTYPE_POLICIES: Final[frozenset[str]] = frozenset(DTYPES) | {"mixed_float16", "mixed_bfloat16"}

#: Keys a Keras config may carry, from Keras 3 get_config() and tf.keras 2 get_config().
KERAS_KEYS: Final = frozenset(
    {
        "name",
        "rate",
        "seed",
        "dtype",
        "data_format",
        "trainable",
        "noise_shape",
        "batch_input_shape",
        "batch_shape",
        "batch_size",
        "weights",
    }
)
#: The Keras input shapes whose first entry, when batch_size is not given, is the batch size.
KERAS_SHAPE_KEYS: Final = ("batch_input_shape", "batch_shape")
#: Module prefixes of a Keras config (Keras 3, tf_keras, tf.keras 2).
KERAS_MODULES: Final = ("keras", "tf_keras", "tf.keras")
MAX_NAME_LENGTH: Final = 128

_NULL: Final = {"type": "null"}


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


def _format_pattern(*formats: DataFormat) -> dict[str, Any]:
    """A data_format string, any case (``resolve`` lower-cases it)."""
    words = "|".join(_any_case(f.value) for f in formats)
    return {"type": "string", "pattern": f"^({words})$"}


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, _NULL]}


_ANY_FORMAT: Final = _or_null(_format_pattern(*DataFormat))
_LAST_ONLY: Final = _or_null(_format_pattern(DataFormat.CHANNELS_LAST))
_RATE: Final = {"type": "number", "minimum": 0, "maximum": 1}
_DTYPE_NAME: Final = {"enum": sorted(DTYPE_POLICIES)}
_POSITIVE: Final = {"type": "integer", "minimum": 1}
_NO_WEIGHTS: Final = _or_null({"type": "array", "maxItems": 0})
_NOISE_SHAPE: Final = _or_null({"type": "array", "items": _or_null(_POSITIVE)})


#: What the document can say of a name (the rest is ``resolve.check_name``'s).
_NAME: Final = {"minLength": 1, "maxLength": MAX_NAME_LENGTH, "pattern": "^[^/\\\\]*$"}


def _kind_is(kind: Kind) -> dict[str, Any]:
    return {"required": ["kind"], "properties": {"kind": {"const": kind.value}}}


def layer_create(schema: dict[str, Any]) -> None:
    """LayerCreate's schema, with ``resolve``'s checks stated."""
    props = schema["properties"]
    props["rate"].update(_RATE)
    props["rate"].pop("anyOf", None)
    props["data_format"].update(_ANY_FORMAT)
    props["name"]["anyOf"][0].update(_NAME)
    props["weights"].update(_NO_WEIGHTS)
    props["dtype"]["anyOf"][0].update(_DTYPE_NAME)
    schema["allOf"] = [
        {"if": _kind_is(Kind.SPATIAL_1D), "then": {"properties": {"data_format": _LAST_ONLY}}},
        {
            "if": _kind_is(Kind.DROPOUT),
            "then": {},
            "else": {"properties": {"noise_shape": _NULL}},
        },
    ]


def _keras_config(class_name: str) -> dict[str, Any]:
    """The ``config`` of a Keras layer of ``class_name``, as ``resolve.from_keras`` reads it."""
    dropout = class_name == "Dropout"
    shape = _or_null({"type": "array", "items": _or_null(_POSITIVE)})
    return {
        "type": "object",
        "properties": {
            "name": _or_null({"type": "string", **_NAME}),
            "rate": _RATE,
            "seed": _or_null({"type": "integer", "minimum": 0, "exclusiveMaximum": 2**64}),
            "dtype": {
                "anyOf": [
                    _DTYPE_NAME,
                    _NULL,
                    {
                        "type": "object",
                        "description": "A serialized Keras DTypePolicy.",
                        "properties": {
                            "config": {
                                "type": "object",
                                "properties": {"name": _DTYPE_NAME},
                                "required": ["name"],
                            }
                        },
                        "required": ["config"],
                    },
                ]
            },
            "data_format": _LAST_ONLY if class_name == "SpatialDropout1D" else _ANY_FORMAT,
            "trainable": {"type": "boolean"},
            "noise_shape": _NOISE_SHAPE if dropout else _NULL,
            "batch_input_shape": shape,
            "batch_shape": shape,
            "batch_size": _or_null(_POSITIVE),
            "weights": _NO_WEIGHTS,
        },
        "required": ["rate"],
        "additionalProperties": False,
    }


def keras_config(schema: dict[str, Any]) -> None:
    """KerasLayerConfig's schema, with each class's config stated."""
    modules = "|".join(m.replace(".", "\\.") for m in KERAS_MODULES)
    schema["properties"]["module"]["anyOf"][0]["pattern"] = f"^({modules})"
    classes = schema["properties"]["class_name"]["enum"]
    schema["allOf"] = [
        {
            "if": {"properties": {"class_name": {"const": name}}},
            "then": {"properties": {"config": _keras_config(name)}},
        }
        for name in classes
    ]

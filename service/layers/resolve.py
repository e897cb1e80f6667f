"""Check a posted spec as Keras would and resolve it to what is stored; map to and from Keras."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass
from typing import Any, Final

from service.core.config import DataFormat, DropoutConfig, Kind
from service.errors import (
    InvalidDataFormat,
    InvalidName,
    InvalidRate,
    InvalidSpec,
    WeightsNotSupported,
)
from service.layers.schema import (
    DTYPE_POLICIES,
    KERAS_KEYS,
    KERAS_MODULES,
    KERAS_SHAPE_KEYS,
    MAX_NAME_LENGTH,
)
from service.layers.spec import KerasLayerConfig, KerasSerialized, Layer, LayerCreate

#: Keras class name <-> kind.
CLASS_NAMES: Final[dict[Kind, str]] = {
    Kind.DROPOUT: "Dropout",
    Kind.SPATIAL_1D: "SpatialDropout1D",
    Kind.SPATIAL_2D: "SpatialDropout2D",
    Kind.SPATIAL_3D: "SpatialDropout3D",
}
KINDS_BY_CLASS: Final[dict[str, Kind]] = {name: kind for kind, name in CLASS_NAMES.items()}

#: Keras's default layer names: the class name in snake case.
DEFAULT_NAMES: Final[dict[Kind, str]] = {
    Kind.DROPOUT: "dropout",
    Kind.SPATIAL_1D: "spatial_dropout1d",
    Kind.SPATIAL_2D: "spatial_dropout2d",
    Kind.SPATIAL_3D: "spatial_dropout3d",
}

#: Layer ids: 32 lowercase hex digits. Names may not look like one, so a ref is never ambiguous.
ID_PATTERN: Final = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class ResolvedSpec:
    """A checked spec, ready to store: ``name`` None means "generate one"."""

    kind: Kind
    rate: float
    data_format: DataFormat | None
    batch_size: int | None
    name: str | None
    trainable: bool
    seed: int | None
    dtype: str | None
    noise_shape: tuple[int | None, ...] | None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["noise_shape"] = None if self.noise_shape is None else list(self.noise_shape)
        return data


def resolve(spec: LayerCreate, default_format: DataFormat) -> ResolvedSpec:
    """Apply Keras's checks to a posted spec and resolve its defaults (data_format above all)."""
    rate = float(spec.rate)
    if not 0.0 <= rate <= 1.0:  # also refuses NaN
        raise InvalidRate(spec.rate)
    if spec.weights:
        raise WeightsNotSupported(len(spec.weights))
    if spec.name is not None:
        check_name(spec.name)
    if spec.dtype is not None and spec.dtype not in DTYPE_POLICIES:
        raise InvalidSpec(
            f"Unknown dtype {spec.dtype!r}; expected one of {', '.join(sorted(DTYPE_POLICIES))}."
        )
    if spec.noise_shape is not None and spec.kind is not Kind.DROPOUT:
        raise InvalidSpec(
            f"noise_shape applies to kind 'dropout' only; {spec.kind.value} builds its own "
            "(one draw per sample and channel)."
        )
    return ResolvedSpec(
        kind=spec.kind,
        rate=rate,
        data_format=_resolve_format(spec.kind, spec.data_format, default_format),
        batch_size=spec.batch_size,
        name=spec.name,
        trainable=spec.trainable,
        seed=spec.seed,
        dtype=spec.dtype,
        noise_shape=None if spec.noise_shape is None else tuple(spec.noise_shape),
    )


def resolve_body(body: LayerCreate | KerasLayerConfig, default_format: DataFormat) -> ResolvedSpec:
    """A posted layer, a spec or a Keras config (see ``spec.LayerBody``), checked and resolved."""
    spec = from_keras(body) if isinstance(body, KerasLayerConfig) else body
    return resolve(spec, default_format)


def _resolve_format(kind: Kind, value: str | None, default: DataFormat) -> DataFormat | None:
    if kind is Kind.DROPOUT:
        if value is not None:
            _parse_format(value)  # still refuse nonsense, as Keras would
        return None
    if kind is Kind.SPATIAL_1D:
        # Keras's SpatialDropout1D has no data_format: its input is (batch, steps, channels).
        if value is not None and _parse_format(value) is not DataFormat.CHANNELS_LAST:
            raise InvalidDataFormat(f"{value} (SpatialDropout1D takes channels_last only)")
        return DataFormat.CHANNELS_LAST
    return default if value is None else _parse_format(value)


def _parse_format(value: str) -> DataFormat:
    try:
        return DataFormat(value.lower())
    except ValueError:
        raise InvalidDataFormat(value.lower()) from None  # Keras quotes it lower-cased


def check_name(name: str) -> None:
    """Refuse names that cannot serve as a URL segment, a model name and a Keras name."""
    problem = None
    if not name or len(name) > MAX_NAME_LENGTH:
        problem = f"must have 1 to {MAX_NAME_LENGTH} characters"
    elif "/" in name or "\\" in name:
        problem = "cannot contain '/' or '\\' (Keras refuses '/' in names too)"
    elif name in {".", ".."}:
        problem = "cannot be '.' or '..'"
    elif any(unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for ch in name):
        problem = "cannot contain control or format characters"
    elif name != name.strip():
        problem = "cannot start or end with whitespace"
    elif ID_PATTERN.fullmatch(name):
        problem = "cannot be 32 hex digits, which is the form of a layer id"
    if problem:
        raise InvalidName(f"Invalid layer name {name!r}: it {problem}.")


def from_keras(keras: KerasLayerConfig) -> LayerCreate:
    """Read a Keras 3 or tf.keras 2 serialized layer as a spec."""
    config = dict(keras.config)
    unknown = sorted(set(config) - KERAS_KEYS)
    if unknown:
        raise InvalidSpec(f"Unexpected key(s) in the Keras config: {', '.join(unknown)}.")
    if keras.module is not None and not keras.module.startswith(KERAS_MODULES):
        raise InvalidSpec(f"Module {keras.module!r} is not a Keras module.")
    batch_size = config.pop("batch_size", None)
    for shape_key in KERAS_SHAPE_KEYS:  # tf.keras 2 / Keras 3 input shapes
        shape = config.pop(shape_key, None)
        if shape is not None and not _is_keras_shape(shape):
            raise InvalidSpec(f"{shape_key} must be a list of positive integers and nulls.")
        if shape and batch_size is None:
            batch_size = shape[0]
    config["dtype"] = _policy_name(config.get("dtype"))
    fields = {"kind": KINDS_BY_CLASS[keras.class_name], "batch_size": batch_size, **config}
    if keras.class_name != "Dropout" and fields.get("noise_shape") is None:
        fields.pop("noise_shape", None)  # tf.keras 2 writes noise_shape: null on spatial layers
    return LayerCreate.model_validate(fields)


def _is_keras_shape(shape: object) -> bool:
    return isinstance(shape, list) and all(
        dim is None or (type(dim) is int and dim >= 1) for dim in shape
    )


def _policy_name(dtype: object) -> str | None:
    """Keras 3 may write the dtype as a serialized DTypePolicy; we keep its name."""
    if isinstance(dtype, dict):
        inner = dtype.get("config")
        if isinstance(inner, dict) and isinstance(inner.get("name"), str):
            return str(inner["name"])
        raise InvalidSpec("A dtype given as an object must be a serialized Keras DTypePolicy.")
    if dtype is None or isinstance(dtype, str):
        return dtype
    raise InvalidSpec(f"dtype must be a string, got {type(dtype).__name__}.")


def to_keras(layer: Layer) -> KerasSerialized:
    """The Keras 3 form: only the arguments Keras 3's constructor takes for this class."""
    config: dict[str, Any] = {
        "name": layer.name,
        "rate": layer.rate,
        "seed": layer.seed,
        "dtype": layer.dtype or "float32",
    }
    if layer.kind in (Kind.SPATIAL_2D, Kind.SPATIAL_3D):
        assert layer.data_format is not None
        config["data_format"] = layer.data_format.value
    if layer.kind is Kind.DROPOUT:
        # Dropout forwards **kwargs to Layer, so it takes trainable; the spatial classes do not.
        config["noise_shape"] = layer.noise_shape
        config["trainable"] = layer.trainable
    return KerasSerialized(class_name=CLASS_NAMES[layer.kind], config=config)


def dropout_config(layer: Layer | ResolvedSpec, name: str | None = None) -> DropoutConfig:
    """What the kernel needs of a layer."""
    return DropoutConfig(
        kind=layer.kind,
        rate=layer.rate,
        data_format=layer.data_format or DataFormat.CHANNELS_LAST,
        noise_shape=None if layer.noise_shape is None else tuple(layer.noise_shape),
        batch_size=layer.batch_size,
        name=name or layer.name or DEFAULT_NAMES[layer.kind],
    )

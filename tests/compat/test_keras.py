"""What the service promises about Keras 3, checked against the real Keras 3 (torch backend).

- Our Keras form (``GET /layers/{ref}/keras``, ``resolve.to_keras``) is what
  ``keras.layers.deserialize`` takes, and the layer it builds has our arguments.
- What Keras 3 writes (``serialize``, ``get_config``) is what our parser reads.
- Numbers: given the mask Keras drew, our kernel writes Keras's output bit for bit (kept maps
  ``x / keep``, dropped maps +0.0 even at NaN and inf); Keras draws one mask cell per cell of
  our ``mask_shape``; inference mode and rate 0 are the identity; rate 1 gives +0.0.
- Errors: Keras's messages for a bad rate, data_format and input rank.

Keras's masks cannot match ours (each backend has its own generator, ours is onnxruntime's
stream), so the mask Keras drew is read off its output and handed to our kernel.

Known differences, not tested here as agreements (see the compat report):
- float16 and bfloat16 dtype policies: Keras's torch backend divides by ``float32(1 - rate)``,
  the kernel by ``1 - rate`` rounded to the input's dtype: up to one ulp apart.
- an unseeded ``Dropout`` without ``noise_shape`` takes torch's own dropout in Keras's torch
  backend (NaN where dropped at NaN/inf, ``x * (1 / keep)``); every other layer takes
  ``where(mask, x / keep, 0)``, the service's formula.
- Keras's torch backend refuses layer seeds of 2**31 and more; the service takes any 64-bit one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import keras
import ml_dtypes
import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from service.core import kernel
from service.core.config import DataFormat, DropoutConfig, Kind
from service.errors import InvalidDataFormat, InvalidRate, RankMismatch
from service.layers.resolve import DEFAULT_NAMES, from_keras, resolve, to_keras
from service.layers.spec import KerasLayerConfig, Layer, LayerCreate
from tests.api.helpers import create, unique

CL, CF = DataFormat.CHANNELS_LAST, DataFormat.CHANNELS_FIRST
KERAS_CLASSES: dict[Kind, Any] = {
    Kind.DROPOUT: keras.layers.Dropout,
    Kind.SPATIAL_1D: keras.layers.SpatialDropout1D,
    Kind.SPATIAL_2D: keras.layers.SpatialDropout2D,
    Kind.SPATIAL_3D: keras.layers.SpatialDropout3D,
}
KINDS_OF_CLASSES = {cls.__name__: kind for kind, cls in KERAS_CLASSES.items()}
UINT: dict[int, type[np.unsignedinteger[Any]]] = {2: np.uint16, 4: np.uint32, 8: np.uint64}
#: Keras's torch backend keeps its layer seed in an int32 tensor.
LARGEST_KERAS_SEED = 2**31 - 1


def test_keras_runs_on_torch() -> None:
    # tests/compat/__init__.py chose the backend; this fails loudly if keras came first.
    assert keras.backend.backend() == "torch"
    assert keras.__version__.startswith("3.")


# -- helpers -------------------------------------------------------------------------------


def keras_layer(
    kind: Kind,
    rate: float,
    data_format: DataFormat | None = CL,
    *,
    seed: int | None = None,
    noise_shape: tuple[int | None, ...] | None = None,
    dtype: str | None = None,
    name: str | None = None,
) -> Any:
    """A Keras layer of this kind, given only the arguments its constructor takes."""
    cls = KERAS_CLASSES[kind]
    common: dict[str, Any] = {"seed": seed, "dtype": dtype, "name": name}
    if kind is Kind.DROPOUT:
        return cls(rate, noise_shape=noise_shape, **common)
    if kind is Kind.SPATIAL_1D:
        return cls(rate, **common)
    assert data_format is not None
    return cls(rate, data_format=data_format.value, **common)


def run(layer: Any, x: NDArray[Any], *, training: bool) -> NDArray[Any]:
    """Call a Keras layer; its output as numpy, bits untouched.

    Not ``keras.ops.convert_to_numpy``: with numpy 2 it warns (torch's ``__array__`` takes no
    ``copy``), and warnings are errors in this suite.
    """
    out = layer(x, training=training)
    assert isinstance(out, torch.Tensor)
    result: NDArray[Any] = out.detach().cpu().numpy()
    return result


def bits(a: NDArray[Any]) -> NDArray[Any]:
    """The bit patterns, so that comparisons see NaN payloads and the sign of zero."""
    return a.view(UINT[a.dtype.itemsize])


def special_values(dtype: np.dtype[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    """Inputs that stay visible (non-zero) when kept, and the signed zeros, which do not."""
    info = np.finfo(dtype)
    width = 8 * dtype.itemsize
    quiet_nan = int(bits(np.array([np.nan], dtype))[0])
    nans = np.array([quiet_nan | 0x1234, quiet_nan | (1 << (width - 1)) | 1], UINT[dtype.itemsize])
    visible = np.concatenate(
        [
            np.array(
                [
                    np.inf,
                    -np.inf,
                    info.max,  # overflows to inf once divided by keep < 1
                    -info.max,
                    info.smallest_subnormal,
                    -3 * info.smallest_subnormal,
                    info.smallest_normal,
                ],
                dtype,
            ),
            nans.view(dtype),  # NaNs with a payload and either sign
        ]
    )
    return visible, np.array([0.0, -0.0], dtype)


def anchors(shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Index of each mask cell's first input cell: the first along every broadcast axis."""
    assert len(shape) == len(mask_shape)
    return tuple(slice(0, 1) if size == 1 else slice(None) for size in mask_shape)


def hostile_input(
    shape: tuple[int, ...], mask_shape: tuple[int, ...], dtype: np.dtype[Any], seed: int
) -> NDArray[Any]:
    """Finite values over 2**-40..2**40, with NaNs, infinities, extremes, subnormals and signed
    zeros sprinkled in. Zeros never sit on an anchor, so every mask cell's fate stays visible."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-40, 40, shape))).astype(dtype)
    x[x == 0] = 1
    visible, zeros = special_values(dtype)
    spots = rng.random(shape) < 0.2
    x[spots] = visible[rng.integers(0, len(visible), int(spots.sum()))]
    on_anchor = np.zeros(shape, dtype=bool)
    on_anchor[anchors(shape, mask_shape)] = True
    zero_spots = (rng.random(shape) < 0.1) & ~on_anchor
    x[zero_spots] = zeros[rng.integers(0, len(zeros), int(zero_spots.sum()))]
    return x


def keras_keep_mask(
    x: NDArray[Any], y: NDArray[Any], mask_shape: tuple[int, ...]
) -> NDArray[np.bool_]:
    """The mask Keras drew, read off its output, in our mask's shape.

    Where the input is non-zero, the cell was kept iff the output is non-zero: a kept
    ``x / keep`` is never zero (keep <= 1), NaN and inf stay NaN and inf, and a dropped cell is
    0. Each mask cell is read at its anchor; every other visible cell must agree, which is
    Keras's mask being constant wherever ours broadcasts.
    """
    nonzero = y != 0
    mask: NDArray[np.bool_] = nonzero[anchors(x.shape, mask_shape)]
    visible = x != 0
    assert np.array_equal(np.broadcast_to(mask, x.shape)[visible], nonzero[visible]), (
        "Keras's mask varies along an axis that kernel.mask_shape broadcasts over"
    )
    return mask


# -- 1. Keras takes our Keras form ---------------------------------------------------------

#: Every (kind, data_format) a stored layer can have.
LAYER_FORMS = [
    (Kind.DROPOUT, None),
    (Kind.SPATIAL_1D, CL),
    (Kind.SPATIAL_2D, CL),
    (Kind.SPATIAL_2D, CF),
    (Kind.SPATIAL_3D, CL),
    (Kind.SPATIAL_3D, CF),
]
#: Spec fields besides kind and data_format, as a client would post them.
SPEC_FIELDS: list[dict[str, Any]] = [
    {},
    {"seed": 0},
    {"seed": 7, "name": "sd"},
    {"seed": LARGEST_KERAS_SEED},
    {"dtype": "float64"},
    {"dtype": "float16", "seed": 3},
    {"dtype": "bfloat16"},
    {"dtype": "mixed_float16"},
    {"dtype": "mixed_bfloat16"},
    {"name": "dropout ü 日本 1"},  # any unicode but "/" (Keras refuses "/" too)
    {"trainable": False},
    {"batch_size": 4},  # not a Keras 3 argument: must not reach Keras
    {"rate": 0.0},
    {"rate": 1.0},
    {"rate": 1 / 3},
]
DROPOUT_FIELDS: list[dict[str, Any]] = [
    {"noise_shape": [None, 1, 5]},
    {"noise_shape": [2, 1, 1], "seed": 5},
    {"noise_shape": [None]},
]


def stored_layer(kind: Kind, data_format: DataFormat | None, **fields: Any) -> Layer:
    """A layer as the service stores it: the spec through the same checks as POST /layers."""
    fields.setdefault("rate", 0.25)
    spec = LayerCreate(
        kind=kind, data_format=None if data_format is None else data_format.value, **fields
    )
    resolved = resolve(spec, CL).as_dict()
    resolved["name"] = resolved["name"] or DEFAULT_NAMES[kind]
    return Layer(id="0" * 32, created_at=datetime.now(UTC), **resolved)


def assert_keras_has(restored: Any, layer: Layer) -> None:
    """The Keras layer carries the stored layer's Keras 3 arguments."""
    assert type(restored) is KERAS_CLASSES[layer.kind]
    config = restored.get_config()
    assert config["name"] == layer.name
    assert config["rate"] == layer.rate
    assert config["seed"] == layer.seed
    if layer.kind in (Kind.SPATIAL_2D, Kind.SPATIAL_3D):
        assert layer.data_format is not None
        assert config["data_format"] == layer.data_format.value
    else:  # SpatialDropout1D is channels-last by construction; Dropout has no channel axis
        assert "data_format" not in config
    # The policy, not config["dtype"]: Keras's spatial get_config writes the variable dtype
    # ("float32" for mixed_float16).
    assert restored.dtype_policy.name == (layer.dtype or "float32")
    if layer.kind is Kind.DROPOUT:
        noise = None if layer.noise_shape is None else tuple(layer.noise_shape)
        assert config["noise_shape"] == noise
        assert restored.trainable is layer.trainable
    else:  # Keras 3's spatial constructors take no trainable, so the Keras form has none
        assert restored.trainable is True


@pytest.mark.parametrize(
    ("kind", "data_format", "fields"),
    [(kind, fmt, fields) for kind, fmt in LAYER_FORMS for fields in SPEC_FIELDS]
    + [(Kind.DROPOUT, None, fields) for fields in DROPOUT_FIELDS],
)
def test_keras_deserializes_our_keras_form(
    kind: Kind, data_format: DataFormat | None, fields: dict[str, Any]
) -> None:
    layer = stored_layer(kind, data_format, **fields)
    # Through JSON, as GET /layers/{ref}/keras sends it (tuples become lists).
    wire = json.loads(json.dumps(to_keras(layer).model_dump(mode="json")))
    assert_keras_has(keras.layers.deserialize(wire), layer)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "dropout", "rate": 0.3, "noise_shape": [None, 1, 4], "trainable": False},
        {"kind": "spatial_dropout_1d", "rate": 0.2, "seed": 11, "dtype": "float64"},
        {"kind": "spatial_dropout_2d", "rate": 0.5, "data_format": "CHANNELS_FIRST"},
        {"kind": "spatial_dropout_3d", "rate": 0.75, "seed": 1, "dtype": "mixed_float16"},
    ],
)
def test_keras_deserializes_what_the_server_serves(
    client: httpx.Client, spec: dict[str, Any]
) -> None:
    body = create(client, **spec)
    response = client.get(f"/layers/{body['id']}/keras")
    assert response.status_code == 200, response.text
    layer = Layer.model_validate(body)
    assert_keras_has(keras.layers.deserialize(response.json()), layer)


# -- 2. We read what Keras writes ----------------------------------------------------------

#: (class, constructor arguments): Keras layers as users build them.
KERAS_LAYERS: list[tuple[str, dict[str, Any]]] = [
    ("Dropout", {"rate": 0.5}),
    ("Dropout", {"rate": 0.25, "noise_shape": (None, 1, 8), "seed": 3, "name": "d"}),
    ("Dropout", {"rate": 0.1, "noise_shape": [2, 1, 1]}),  # Keras stores a tuple
    ("Dropout", {"rate": 0.3, "dtype": "float64", "trainable": False}),
    ("Dropout", {"rate": 0.3, "dtype": "mixed_bfloat16"}),
    ("Dropout", {"rate": 0}),
    ("Dropout", {"rate": 1.0, "seed": LARGEST_KERAS_SEED}),
    ("SpatialDropout1D", {"rate": 0.2}),
    ("SpatialDropout1D", {"rate": 0.2, "seed": 5, "name": "s1", "dtype": "float16"}),
    ("SpatialDropout2D", {"rate": 0.5}),  # data_format: Keras's image_data_format()
    ("SpatialDropout2D", {"rate": 0.5, "data_format": "channels_first", "seed": 0}),
    ("SpatialDropout2D", {"rate": 1 / 3, "data_format": "CHANNELS_LAST", "name": "ü 日本"}),
    ("SpatialDropout2D", {"rate": 0.4, "dtype": "bfloat16"}),
    ("SpatialDropout3D", {"rate": 0.75, "data_format": "channels_first"}),
    ("SpatialDropout3D", {"rate": 0.75, "seed": 11, "dtype": "mixed_float16"}),
]


def serialized(layer: Any) -> Any:
    return keras.layers.serialize(layer)


def serialized_as_json(layer: Any) -> Any:
    return json.loads(json.dumps(keras.layers.serialize(layer)))


def bare_config(layer: Any) -> Any:
    # get_config alone, as people paste it, with only the class name beside it.
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


@pytest.mark.parametrize("form", [serialized, serialized_as_json, bare_config])
@pytest.mark.parametrize(("class_name", "arguments"), KERAS_LAYERS)
def test_we_read_what_keras_writes(
    form: Callable[[Any], Any], class_name: str, arguments: dict[str, Any]
) -> None:
    layer = getattr(keras.layers, class_name)(**arguments)
    written = form(layer)
    # The default data_format is the opposite of what Keras wrote (channels_last unless a
    # keras.json says otherwise), so a data_format we failed to read would show.
    default = CF if getattr(layer, "data_format", "channels_last") == "channels_last" else CL
    spec = resolve(from_keras(KerasLayerConfig.model_validate(written)), default)

    kind = KINDS_OF_CLASSES[class_name]
    assert spec.kind is kind
    assert spec.rate == layer.rate
    assert spec.seed == layer.seed
    assert spec.name == layer.name
    expected_format = {Kind.DROPOUT: None, Kind.SPATIAL_1D: "channels_last"}.get(
        kind, getattr(layer, "data_format", None)
    )
    assert spec.data_format == expected_format
    dtype = written["config"]["dtype"]  # a policy name, or a serialized DTypePolicy
    assert spec.dtype == (dtype["config"]["name"] if isinstance(dtype, dict) else dtype)
    if kind is Kind.DROPOUT:
        assert spec.noise_shape == layer.noise_shape
        assert spec.trainable is layer.trainable


@pytest.mark.e2e
@pytest.mark.parametrize(("class_name", "arguments"), KERAS_LAYERS[1::3])
def test_the_server_takes_what_keras_serializes(
    client: httpx.Client, class_name: str, arguments: dict[str, Any]
) -> None:
    layer = getattr(keras.layers, class_name)(**{**arguments, "name": unique("keras")})
    response = client.post("/layers", json=serialized_as_json(layer))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["kind"] == KINDS_OF_CLASSES[class_name].value
    assert (body["name"], body["rate"], body["seed"]) == (layer.name, layer.rate, layer.seed)
    if class_name in ("SpatialDropout2D", "SpatialDropout3D"):
        assert body["data_format"] == layer.data_format


# -- 3. Numbers ----------------------------------------------------------------------------

#: (kind, data_format, input shape, noise_shape): every mask layout.
LAYOUTS: list[tuple[Kind, DataFormat, tuple[int, ...], tuple[int | None, ...] | None]] = [
    (Kind.SPATIAL_1D, CL, (4, 7, 6), None),
    (Kind.SPATIAL_2D, CL, (4, 5, 3, 6), None),
    (Kind.SPATIAL_2D, CF, (4, 6, 5, 3), None),
    (Kind.SPATIAL_3D, CL, (3, 4, 3, 2, 6), None),
    (Kind.SPATIAL_3D, CF, (3, 6, 4, 3, 2), None),
    (Kind.DROPOUT, CL, (6, 40), None),
    (Kind.DROPOUT, CL, (4, 5, 6), (None, 1, 6)),
    (Kind.DROPOUT, CL, (4, 5, 6), (1, 5, 1)),
    (Kind.DROPOUT, CL, (4, 5, 6), (4, 1, None)),
]
LAYOUT_IDS = [
    f"{kind.value}-{fmt.value}-{'x'.join(map(str, shape))}-noise{noise}"
    for kind, fmt, shape, noise in LAYOUTS
]
#: (input dtype, Keras dtype policy): Keras computes in its policy's dtype (its default
#: policy casts float16 and float64 inputs to float32), the service in the input's.
DTYPES = [(np.dtype(np.float32), None), (np.dtype(np.float64), "float64")]
RATES = [0.1, 0.25, 1 / 3, 0.5, 0.7, 0.95, 1.0]


def numeric_cases() -> list[Any]:
    cases = []
    for layout, layout_id in zip(LAYOUTS, LAYOUT_IDS, strict=True):
        kind, _, _, noise = layout
        for seed in (None, 1234):
            if kind is Kind.DROPOUT and noise is None and seed is None:
                # Keras's torch backend hands this one case to torch.nn.functional.dropout
                # (x * (1 / keep), NaN where dropped at NaN/inf): a known difference.
                continue
            cases.append(pytest.param(*layout, seed, id=f"{layout_id}-seed{seed}"))
    return cases


@pytest.mark.parametrize(("dtype", "policy"), DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize(("kind", "data_format", "shape", "noise", "seed"), numeric_cases())
def test_given_keras_s_mask_the_kernel_writes_keras_s_output_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch,
    kind: Kind,
    data_format: DataFormat,
    shape: tuple[int, ...],
    noise: tuple[int | None, ...] | None,
    seed: int | None,
    rate: float,
    dtype: np.dtype[Any],
    policy: str | None,
) -> None:
    config = DropoutConfig(kind, rate, data_format, noise_shape=noise)
    x = hostile_input(shape, kernel.mask_shape(config, shape), dtype, seed=len(shape) + 7)
    layer = keras_layer(kind, rate, data_format, seed=seed, noise_shape=noise, dtype=policy)
    assert_kernel_writes_keras_s_output(monkeypatch, config, layer, x)


#: Inputs the kernel takes other paths for: maps of 256 KiB or more (channels_first: runs of
#: maps, channels_last: samples in blocks) and arrays that are not C-contiguous.
LARGE_LAYOUTS = [
    pytest.param(Kind.SPATIAL_2D, CF, (2, 6, 256, 260), "C", id="2d-channels_first-large-maps"),
    pytest.param(Kind.SPATIAL_3D, CL, (4, 40, 40, 42, 3), "C", id="3d-channels_last-large-rows"),
    pytest.param(Kind.SPATIAL_2D, CL, (4, 5, 3, 6), "F", id="2d-channels_last-fortran"),
    pytest.param(Kind.SPATIAL_3D, CF, (3, 6, 4, 3, 2), "F", id="3d-channels_first-fortran"),
]


@pytest.mark.parametrize(("dtype", "policy"), DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("rate", [1 / 3, 0.7])
@pytest.mark.parametrize(("kind", "data_format", "shape", "order"), LARGE_LAYOUTS)
def test_the_kernel_writes_keras_s_output_for_large_and_strided_inputs(
    monkeypatch: pytest.MonkeyPatch,
    kind: Kind,
    data_format: DataFormat,
    shape: tuple[int, ...],
    order: Literal["C", "F"],
    rate: float,
    dtype: np.dtype[Any],
    policy: str | None,
) -> None:
    config = DropoutConfig(kind, rate, data_format)
    x = hostile_input(shape, kernel.mask_shape(config, shape), dtype, seed=11)
    x = np.asarray(x, order=order)
    layer = keras_layer(kind, rate, data_format, seed=99, dtype=policy)
    assert_kernel_writes_keras_s_output(monkeypatch, config, layer, x)


def assert_kernel_writes_keras_s_output(
    monkeypatch: pytest.MonkeyPatch, config: DropoutConfig, layer: Any, x: NDArray[Any]
) -> None:
    """Keras's dropped cells are +0.0, and our kernel, handed the mask Keras drew in place of
    its own draw, writes Keras's output bit for bit: its division and its zeroing."""
    y = run(layer, x, training=True)
    assert y.dtype == x.dtype
    mask = keras_keep_mask(x, y, kernel.mask_shape(config, x.shape))
    dropped = ~np.broadcast_to(mask, x.shape)
    assert not bits(y)[dropped].any(), "Keras's dropped cells are not all +0.0"
    monkeypatch.setattr(kernel, "keep_mask_for", lambda *args, **kwargs: mask.copy())
    ours = kernel.apply(config, x, training=True, seed=0).output
    assert ours.dtype == x.dtype
    ours_bits, keras_bits = np.ravel(bits(ours)), np.ravel(bits(y))  # logical (C) order
    differ = np.flatnonzero(ours_bits != keras_bits)
    assert differ.size == 0, (
        f"{differ.size} of {x.size} cells differ, first at flat index {differ[0]}: "
        f"x={np.ravel(x)[differ[0]]!r}, keras={np.ravel(y)[differ[0]]!r}, "
        f"ours={np.ravel(ours)[differ[0]]!r}"
    )


#: Larger layouts for reading the noise shape: every axis the mask does not broadcast over
#: has 8 or more cells, so a mask constant along it would be a 2**-7 (or rarer) event.
NOISE_LAYOUTS: list[tuple[Kind, DataFormat, tuple[int, ...], tuple[int | None, ...] | None]] = [
    (Kind.SPATIAL_1D, CL, (8, 5, 12), None),
    (Kind.SPATIAL_2D, CL, (8, 3, 4, 12), None),
    (Kind.SPATIAL_2D, CF, (8, 12, 3, 4), None),
    (Kind.SPATIAL_3D, CL, (8, 2, 3, 2, 12), None),
    (Kind.SPATIAL_3D, CF, (8, 12, 2, 3, 2), None),
    (Kind.DROPOUT, CL, (64,), None),
    (Kind.DROPOUT, CL, (8, 3, 12), None),
    (Kind.DROPOUT, CL, (8, 3, 12), (None, 1, 12)),
    (Kind.DROPOUT, CL, (8, 12, 3), (1, None, 1)),
    (Kind.DROPOUT, CL, (8, 3, 12), (8, 1, None)),
]


@pytest.mark.parametrize(("kind", "data_format", "shape", "noise"), NOISE_LAYOUTS)
def test_keras_draws_one_cell_per_cell_of_our_mask_shape(
    kind: Kind,
    data_format: DataFormat,
    shape: tuple[int, ...],
    noise: tuple[int | None, ...] | None,
) -> None:
    config = DropoutConfig(kind, 0.5, data_format, noise_shape=noise)
    mask_shape = kernel.mask_shape(config, shape)
    x = np.random.default_rng(1).uniform(1, 2, shape).astype(np.float32)
    # Seeded, so the draw (and this test's outcome) is fixed for given Keras and torch.
    y = run(keras_layer(kind, 0.5, data_format, seed=2024, noise_shape=noise), x, training=True)
    # Keras's mask is constant wherever ours broadcasts (checked in keras_keep_mask) ...
    mask = keras_keep_mask(x, y, mask_shape)
    # ... and varies along every other axis: its noise shape is exactly ours.
    for axis, size in enumerate(mask_shape):
        if size > 1:
            assert not np.all(mask == mask.take([0], axis=axis)), f"constant along axis {axis}"


@pytest.mark.parametrize(("dtype", "policy"), DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize(
    ("training", "rate"), [(False, 0.5), (False, 1.0), (True, 0.0)], ids=["infer", "infer1", "r0"]
)
@pytest.mark.parametrize(("kind", "data_format", "shape", "noise"), LAYOUTS, ids=LAYOUT_IDS)
def test_inference_mode_and_rate_zero_give_the_input_bit_for_bit(
    kind: Kind,
    data_format: DataFormat,
    shape: tuple[int, ...],
    noise: tuple[int | None, ...] | None,
    training: bool,
    rate: float,
    dtype: np.dtype[Any],
    policy: str | None,
) -> None:
    x = hostile_input(shape, shape, dtype, seed=7)  # NaN payloads and -0.0 included
    layer = keras_layer(kind, rate, data_format, seed=5, noise_shape=noise, dtype=policy)
    y = run(layer, x, training=training)
    config = DropoutConfig(kind, rate, data_format, noise_shape=noise)
    ours = kernel.apply(config, x, training=training, seed=5).output
    assert np.array_equal(bits(y), bits(x))
    assert np.array_equal(bits(ours), bits(x))


@pytest.mark.parametrize(("dtype", "policy"), DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize(("kind", "data_format", "shape", "noise"), LAYOUTS, ids=LAYOUT_IDS)
def test_rate_one_gives_plus_zero_everywhere(
    kind: Kind,
    data_format: DataFormat,
    shape: tuple[int, ...],
    noise: tuple[int | None, ...] | None,
    dtype: np.dtype[Any],
    policy: str | None,
) -> None:
    # Our own draw this time (no mask handed over): at rate 1 it must drop every cell.
    x = hostile_input(shape, shape, dtype, seed=9)
    y = run(keras_layer(kind, 1.0, data_format, noise_shape=noise, dtype=policy), x, training=True)
    config = DropoutConfig(kind, 1.0, data_format, noise_shape=noise)
    ours = kernel.apply(config, x, training=True, seed=9).output
    assert not bits(y).any()
    assert not bits(ours).any()


@pytest.mark.parametrize("dtype", [np.float16, np.float64, ml_dtypes.bfloat16])
def test_keras_s_default_policy_computes_in_float32_where_we_keep_the_input_s_dtype(
    dtype: type[np.generic],
) -> None:
    # semantics.md: "float inputs autocast to float32" in Keras; the README: inputs keep their
    # own dtype in the service. This is why the comparisons above give Keras a float64 policy.
    x = np.ones((2, 2, 2, 3), dtype)
    y = keras.layers.SpatialDropout2D(0.5, seed=1)(x, training=True)
    assert y.dtype == torch.float32
    ours = kernel.apply(DropoutConfig(Kind.SPATIAL_2D, 0.5), x, training=True, seed=1).output
    assert ours.dtype == np.dtype(dtype)


# -- 4. Errors -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("rate", [1.5, -0.5, 2, -1, 1.0000000000000002, math.inf, math.nan])
def test_a_rate_outside_0_1_is_refused_with_keras_s_message(kind: Kind, rate: float) -> None:
    with pytest.raises(ValueError) as theirs:
        KERAS_CLASSES[kind](rate)
    with pytest.raises(InvalidRate) as ours:
        resolve(LayerCreate(kind=kind, rate=rate), CL)
    assert ours.value.detail == str(theirs.value)
    assert InvalidRate(rate).detail == str(theirs.value)


@pytest.mark.parametrize("kind", [Kind.SPATIAL_2D, Kind.SPATIAL_3D])
@pytest.mark.parametrize("value", ["nhwc", "channels-last", "channels_lastt", ""])
def test_an_unknown_data_format_is_refused_with_keras_s_message(kind: Kind, value: str) -> None:
    # Lower case only: Keras lower-cases the value it quotes, we quote it as sent.
    with pytest.raises(ValueError) as theirs:
        KERAS_CLASSES[kind](0.5, data_format=value)
    with pytest.raises(InvalidDataFormat) as ours:
        resolve(LayerCreate(kind=kind, rate=0.5, data_format=value), CL)
    assert ours.value.detail == str(theirs.value)


@pytest.mark.parametrize(
    ("kind", "rank"),
    [
        (kind, rank)
        for kind in (Kind.SPATIAL_1D, Kind.SPATIAL_2D, Kind.SPATIAL_3D)
        for rank in range(7)
        if rank != kind.rank
    ],
)
def test_a_wrong_rank_is_refused_with_keras_s_wording(kind: Kind, rank: int) -> None:
    shape = tuple(range(2, 2 + rank))
    with pytest.raises(ValueError) as theirs:
        run(keras_layer(kind, 0.5, name="sd"), np.ones(shape, np.float32), training=True)
    with pytest.raises(RankMismatch) as ours:
        kernel.mask_shape(DropoutConfig(kind, 0.5, name="sd"), shape)
    # Keras 3.15 opens with "Input 0 with name 'None' of layer 'sd'", we with tf.keras 2's
    # 'Input 0 of layer "sd"' (reported); the sentence after it is the same, shape included.
    sentence = "is incompatible with the layer: "
    keras_message, our_message = str(theirs.value), ours.value.detail
    assert keras_message.startswith("Input 0 ") and our_message.startswith("Input 0 ")
    assert "'sd'" in keras_message and '"sd"' in our_message
    assert (
        our_message[our_message.index(sentence) :] == keras_message[keras_message.index(sentence) :]
    )

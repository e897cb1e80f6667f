"""Build an ONNX model of a layer that onnxruntime runs exactly as the service's kernel does.

The graph (``X`` of any float dtype offered, ``training_mode`` a bool input that defaults to
false through an overridable initializer; outputs ``Y`` and the keep ``mask``)::

    x_shape    = Shape(X)
    mask_shape = Where(take, x_shape, fixed)      # [N, C, 1, 1], [N, 1, 1, C], noise_shape...
    Y, mask    = If(training_mode)
      then: ones    = ConstantOfShape(mask_shape, 1.0f)
            _, mask = Dropout(ones, ratio, training_mode, seed=mix_seed(seed))
            Y       = Where(Xor(mask, true), 0, Div(X, keep))
      else: Y       = Identity(X)                 # inference: the input itself, every bit
            mask    = ConstantOfShape(mask_shape, true)

Why it is built so (measured with onnx 1.23 and onnxruntime 1.32 on Linux):

- The mask comes from Dropout on a float32 tensor of ones *of the mask's shape*, so the draws
  are numbered exactly as the kernel numbers them (sample-major, channel-minor), whatever X's
  dtype: the ratio is float32, as the kernel's threshold ``float32(rate)``.
- The mask is consumed in the graph (and is a graph output): onnxruntime deletes a Dropout
  whose mask is unused, at every optimization level.
- Kept values are ``Div(X, keep)``, not Dropout's own ``x * mask / (1 - ratio)``, which rounds
  differently; the ``Where`` gives +0.0 where X is NaN or inf, as Keras 3 and the kernel do,
  and keeps a kept -0.0 negative (see ``_training_branch``). For float16 the division runs in
  float32 between two Casts, as the kernel's does: one rounding.
- In inference mode Dropout's mask is all true, so the training branch would answer
  ``X / keep``: the ``If`` answers X itself instead, and never runs Dropout, so inference runs
  leave onnxruntime's random stream where it was.
- onnxruntime refuses ``ratio >= 1``: when ``float32(rate)`` is 1 the training branch is zeros
  and an all-false mask, with no Dropout. At rate 0 it is the identity, as in the kernel.
- Batch and spatial dimensions stay symbolic: the mask shape is computed from ``Shape(X)``.

This module is pure (no HTTP, no store): a layer, a seed, an opset and a dtype in, a
``ModelProto`` out. bfloat16 is refused: onnxruntime has no CPU kernel for ``Where`` or
``Div`` in bfloat16.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service import __version__
from service.core import kernel, rng
from service.core.bounds import MAX_DIM, MAX_RANK
from service.core.config import DataFormat, DropoutConfig, Kind
from service.core.dtypes import DTYPES
from service.errors import (
    InvalidSpec,
    RequestValidation,
    SeedRequired,
    UnsupportedOnnxDtype,
    UnsupportedOpset,
)
from service.layers.resolve import DEFAULT_NAMES, ResolvedSpec, dropout_config
from service.layers.spec import Layer

#: The oldest opset offered: Dropout-13 (ratio and training_mode as inputs, a seed attribute).
MIN_OPSET: Final = 13
#: The default: the newest opset that every onnx (>= 1.16) and onnxruntime (>= 1.18) this
#: project admits can build and load, so a default export loads wherever the service runs.
DEFAULT_OPSET: Final = 21
DEFAULT_DTYPE: Final = "float32"
PRODUCER: Final = "spatial-dropout"

#: Tensor dtypes a model can be exported for, by wire name.
ONNX_DTYPES: Final[dict[str, int]] = {
    "float16": TensorProto.FLOAT16,
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
}
#: Why the other dtypes of the service are refused.
REFUSED_DTYPES: Final[dict[str, str]] = {
    "bfloat16": "onnxruntime has no CPU kernel for Where or Div in bfloat16",
}


@dataclass(frozen=True, slots=True)
class GraphSpec:
    """What a graph is built from (the user's seed and the layer's spec go to metadata)."""

    config: DropoutConfig
    rank: int
    dtype: str
    opset: int
    stream_seed: int


# -- the entry point ---------------------------------------------------------------------


def export_layer(
    layer: Layer | ResolvedSpec,
    *,
    seed: int | None = None,
    opset: int = DEFAULT_OPSET,
    dtype: str = DEFAULT_DTYPE,
    rank: int | None = None,
) -> onnx.ModelProto:
    """The model of ``layer`` for the user seed ``seed`` (default: the layer's own).

    ``rank`` is needed for element-wise dropout only (see ``model_rank``).
    """
    check_opset(opset)
    check_dtype(dtype)
    config = dropout_config(layer)
    rank = model_rank(config, rank)
    used = export_seed(layer, seed)
    spec = GraphSpec(config, rank, dtype, opset, rng.mix_seed(used))
    model = build_model(spec)
    helper.set_model_props(
        model,
        {
            "seed": str(used),
            "stream_seed": str(rng.mix_seed(used)),
            "layer": json.dumps(spec_dict(layer), sort_keys=True, separators=(",", ":")),
            "producer_version": __version__,
        },
    )
    return model


def export_seed(layer: Layer | ResolvedSpec, seed: int | None) -> int:
    """The user seed of an export: the one asked for, else the layer's; else SeedRequired.

    /apply draws a seed when neither is given, but a model bakes its seed in, and a model
    file should be a pure function of what was asked, not of the moment it was made.
    """
    used = layer.seed if seed is None else seed
    if used is None:
        raise SeedRequired(layer.name or DEFAULT_NAMES[layer.kind])
    return used


def check_opset(opset: int) -> None:
    """Refuse an opset outside ``supported_opsets()``."""
    offered = supported_opsets()
    if opset not in offered:
        raise UnsupportedOpset(opset, offered.start, offered.stop - 1)


def check_dtype(dtype: str) -> None:
    """Refuse a dtype the model cannot be run exactly in."""
    if dtype not in ONNX_DTYPES:
        raise UnsupportedOnnxDtype(dtype, REFUSED_DTYPES.get(dtype, "not a float dtype"))


@cache
def supported_opsets() -> range:
    """Opsets from MIN_OPSET to the newest both the installed onnx and onnxruntime support.

    onnxruntime has no API that says which opsets it loads, so ask it: the newest opset whose
    model (a float16 layer, which has every operator and version we emit) it opens. Cached:
    the answer is a property of the installed packages.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # the refusals below are expected: log nothing
    config = DropoutConfig(Kind.SPATIAL_2D, 0.5)
    for opset in range(onnx.defs.onnx_opset_version(), MIN_OPSET - 1, -1):
        probe = build_model(GraphSpec(config, 4, "float16", opset, 1)).SerializeToString()
        try:
            ort.InferenceSession(probe, options, providers=["CPUExecutionProvider"])
        except Exception:  # onnxruntime raises its own types (Fail, InvalidGraph...)
            continue
        return range(MIN_OPSET, opset + 1)
    raise RuntimeError("onnxruntime loads none of the opsets this exporter builds")


def spec_dict(layer: Layer | ResolvedSpec) -> dict[str, Any]:
    """The layer as a JSON object, the form a model's metadata records it in."""
    if isinstance(layer, Layer):
        return layer.model_dump(mode="json")
    data = layer.as_dict()
    data["kind"] = layer.kind.value
    data["data_format"] = None if layer.data_format is None else layer.data_format.value
    return data


# -- the graph ---------------------------------------------------------------------------


def build_model(spec: GraphSpec) -> onnx.ModelProto:
    """The model for a graph spec; no checks of opset or dtype range (see ``export_layer``)."""
    config, elem = spec.config, ONNX_DTYPES[spec.dtype]
    x_dims, mask_dims = _dims(config, spec.rank)
    take, fixed = _mask_template(config, spec.rank)
    initializers = [numpy_helper.from_array(np.array(False), "training_mode")]
    nodes = [helper.make_node("Shape", ["X"], ["x_shape"])]
    if take is None:  # element-wise: the mask has X's shape
        mask_shape = "x_shape"
    else:
        mask_shape = "mask_shape"
        initializers += [
            numpy_helper.from_array(np.array(take, dtype=np.bool_), "take"),
            numpy_helper.from_array(np.array(fixed, dtype=np.int64), "fixed"),
        ]
        nodes.append(helper.make_node("Where", ["take", "x_shape", "fixed"], [mask_shape]))
    nodes.append(
        helper.make_node(
            "If",
            ["training_mode"],
            ["Y", "mask"],
            then_branch=_training_branch(spec, mask_shape),
            else_branch=_inference_branch(mask_shape, elem),
        )
    )
    graph = helper.make_graph(
        nodes,
        config.name,
        inputs=[
            helper.make_tensor_value_info("X", elem, x_dims),
            helper.make_tensor_value_info("training_mode", TensorProto.BOOL, []),
        ],
        outputs=[
            helper.make_tensor_value_info("Y", elem, x_dims),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, mask_dims),
        ],
        initializer=initializers,
        doc_string=_GRAPH_DOC,
    )
    opsets = [helper.make_opsetid("", spec.opset)]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
        producer_name=PRODUCER,
        producer_version=__version__,
        doc_string=f"{config.kind.value}, rate {config.rate}: Keras dropout, bit for bit "
        "as the spatial-dropout service computes it (onnxruntime on Linux).",
    )
    return model


_GRAPH_DOC: Final = (
    "Inputs: X; training_mode (bool scalar, default false: Y is X). "
    "Outputs: Y; mask (true = kept), the keep mask in its broadcast shape."
)


def _training_branch(spec: GraphSpec, mask_shape: str) -> onnx.GraphProto:
    config, elem = spec.config, ONNX_DTYPES[spec.dtype]
    dtype = DTYPES[spec.dtype]
    outputs = [
        helper.make_tensor_value_info("Y_train", elem, None),
        helper.make_tensor_value_info("mask_train", TensorProto.BOOL, None),
    ]
    if config.rate == 0:  # the kernel's identity: no draws at all
        nodes = [
            helper.make_node("Identity", ["X"], ["Y_train"]),
            _filled(mask_shape, "mask_train", TensorProto.BOOL, True),
        ]
        return helper.make_graph(nodes, "train", [], outputs)
    if np.float32(config.rate) >= 1:
        # onnxruntime refuses ratio >= 1; the kernel's mask (u >= 1.0f) is all false here.
        nodes = [
            _filled("x_shape", "Y_train", elem, 0.0),
            _filled(mask_shape, "mask_train", TensorProto.BOOL, False),
        ]
        return helper.make_graph(nodes, "train", [], outputs)
    keep = kernel.keep_factor(config.rate, dtype)
    # float16 divides in float32 and rounds once, as the kernel does (its keep factor is the
    # float16 value, widened exactly).
    wide = spec.dtype == "float16"
    initializers = [
        numpy_helper.from_array(np.array(config.rate, dtype=np.float32), "ratio"),
        numpy_helper.from_array(np.array(keep, dtype=np.float32 if wide else dtype), "keep"),
        numpy_helper.from_array(np.array(0, dtype=dtype), "zero"),
        numpy_helper.from_array(np.array(True), "true"),
    ]
    nodes = [
        _filled(mask_shape, "ones", TensorProto.FLOAT, 1.0),
        helper.make_node(
            "Dropout",
            ["ones", "ratio", "training_mode"],
            ["ones_dropped", "mask_train"],
            seed=spec.stream_seed,
        ),
    ]
    if wide:
        nodes += [
            helper.make_node("Cast", ["X"], ["x_wide"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["x_wide", "keep"], ["scaled_wide"]),
            helper.make_node("Cast", ["scaled_wide"], ["scaled"], to=elem),
        ]
    else:
        nodes.append(helper.make_node("Div", ["X", "keep"], ["scaled"]))
    # Where(dropped, 0, scaled), not Where(mask, scaled, 0): onnxruntime's CPU Where selects
    # each input against a +0.0 default and merges with ``x_sel != 0 ? x_sel : y_sel``, so a
    # -0.0 taken from its X input comes out +0.0; taken from its Y input it stays -0.0. Xor,
    # not Not: onnxruntime's NotWhereFusion would swap the inputs back.
    nodes += [
        helper.make_node("Xor", ["mask_train", "true"], ["dropped"]),
        helper.make_node("Where", ["dropped", "zero", "scaled"], ["Y_train"]),
    ]
    return helper.make_graph(nodes, "train", [], outputs, initializer=initializers)


def _inference_branch(mask_shape: str, elem: int) -> onnx.GraphProto:
    return helper.make_graph(
        [
            helper.make_node("Identity", ["X"], ["Y_infer"]),
            _filled(mask_shape, "mask_infer", TensorProto.BOOL, True),
        ],
        "infer",
        [],
        [
            helper.make_tensor_value_info("Y_infer", elem, None),
            helper.make_tensor_value_info("mask_infer", TensorProto.BOOL, None),
        ],
    )


def _filled(shape: str, output: str, elem: int, value: float | bool) -> onnx.NodeProto:
    """``ConstantOfShape``: a tensor of ``shape`` (a graph value) filled with ``value``."""
    return helper.make_node(
        "ConstantOfShape",
        [shape],
        [output],
        value=helper.make_tensor(f"{output}_value", elem, [1], [value]),
    )


def _mask_template(config: DropoutConfig, rank: int) -> tuple[list[bool] | None, list[int]]:
    """Which mask axes take X's size (``take``), and the fixed sizes of the others.

    None for element-wise dropout, whose mask is X's shape.
    """
    if config.kind is Kind.DROPOUT:
        if config.noise_shape is None:
            return None, []
        return [d is None for d in config.noise_shape], [d or 0 for d in config.noise_shape]
    channel = 1 if config.data_format is DataFormat.CHANNELS_FIRST else rank - 1
    take = [axis in (0, channel) for axis in range(rank)]
    return take, [0 if t else 1 for t in take]


def model_rank(config: DropoutConfig, rank: int | None = None) -> int:
    """The input rank of the model: the kind's, the noise_shape's, or ``rank`` for dropout.

    ONNX requires a rank for a model's inputs, so element-wise dropout (any rank in Keras)
    is exported for one rank at a time.
    """
    if rank is not None and not 0 <= rank <= MAX_RANK:
        raise RequestValidation(f"rank: must be between 0 and {MAX_RANK}, not {rank}.")
    fixed = config.kind.rank
    if fixed is None and config.noise_shape is not None:
        # Specs are bounded when they are created; a row stored before the bounds were
        # must not reach np.array(..., int64), which would overflow.
        if len(config.noise_shape) > MAX_RANK or any(
            d is not None and not 1 <= d <= MAX_DIM for d in config.noise_shape
        ):
            raise InvalidSpec(
                f"noise_shape: at most {MAX_RANK} entries, each null or 1 to {MAX_DIM}."
            )
        fixed = len(config.noise_shape)
    if fixed is None:
        if rank is None:
            raise RequestValidation(
                "rank: a dropout layer without noise_shape takes inputs of any rank, and an "
                "ONNX model needs one: pass the input rank (?rank= or --rank)."
            )
        return rank
    if rank is not None and rank != fixed:
        raise RequestValidation(f"rank: a {config.kind.value} layer takes rank {fixed} only.")
    return fixed


_SPATIAL_NAMES: Final[dict[int, list[str | int]]] = {
    3: ["L"],
    4: ["H", "W"],
    5: ["D", "H", "W"],
}


def _dims(config: DropoutConfig, rank: int) -> tuple[list[str | int], list[str | int]]:
    """Dimensions of X (and Y) and of the mask: symbolic names, or sizes where fixed."""
    if config.kind is Kind.DROPOUT:
        x_dims: list[str | int] = ["N" if axis == 0 else f"d{axis}" for axis in range(rank)]
        noise = config.noise_shape
        if noise is None:
            return x_dims, x_dims
        # An integer noise_shape entry other than 1 fixes that axis of X (the kernel refuses
        # other sizes); 1 broadcasts over any size.
        x_dims = [x if d is None or d == 1 else d for x, d in zip(x_dims, noise, strict=True)]
        return x_dims, [x if d is None else d for x, d in zip(x_dims, noise, strict=True)]
    ones: list[str | int] = [1] * (rank - 2)
    if config.data_format is DataFormat.CHANNELS_FIRST:
        return ["N", "C", *_SPATIAL_NAMES[rank]], ["N", "C", *ones]
    return ["N", *_SPATIAL_NAMES[rank], "C"], ["N", *ones, "C"]

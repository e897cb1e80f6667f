"""The ONNX graph of a layer, in either mask form: what ``export`` and ``compose`` insert.

Both forms take ``X`` (any float dtype offered) and a bool scalar ``training_mode``, and
answer ``Y`` and the keep ``mask``::

    x_shape    = Shape(X)
    mask_shape = Where(take, x_shape, fixed)      # [N, C, 1, 1], [N, 1, 1, C], noise_shape...
    Y, mask    = If(training_mode)
      then: mask = the keep mask of mask_shape    # the form: see below
            Y    = Where(Xor(mask, true), 0, X / keep)
      else: Y    = Identity(X)                    # inference: the input itself, every bit
            mask = ConstantOfShape(mask_shape, true)

The ``dropout`` form draws the mask with the Dropout operator on a float32 tensor of ones of
the mask's shape (``seed = mix_seed(seed)``); ``training_mode`` defaults to false through an
initializer. Only onnxruntime's CPU build on Linux draws ``/apply``'s stream with it (the
README's "Where bit-exactness ends" has the table). The ``portable`` form computes the stream
in the graph from int32 arithmetic (``service.onnx.stream``) and divides exactly on any
runtime (``service.onnx.division``); its ``training_mode`` is a plain input with no
initializer, which every runtime can feed, and a run is a pure function of its inputs.

Why it is built so (measured with onnx 1.23 and onnxruntime 1.32 on Linux):

- The Dropout form's draws are numbered as the kernel numbers them (sample-major,
  channel-minor) because Dropout runs on ones *of the mask's shape*; its ratio is float32, as
  the kernel's threshold ``float32(rate)``. The mask is consumed in the graph (and is a graph
  output): onnxruntime deletes a Dropout whose mask is unused, at every optimization level.
- Kept values are ``X / keep``, not Dropout's own ``x * mask / (1 - ratio)``, which rounds
  differently; the ``Where`` gives +0.0 where X is NaN or inf, as Keras 3 and the kernel do,
  and keeps a kept -0.0 negative (see ``_training_branch``). For float16 the division runs
  in float32 between two Casts, as the kernel's does: one rounding.
- In inference mode the ``If`` answers X itself and draws nothing, so inference runs leave
  onnxruntime's Dropout stream where it was.
- When ``float32(rate)`` is 1 the training branch is zeros and an all-false mask, with no
  draws (onnxruntime refuses ``ratio >= 1``). At rate 0 it is the identity, as in the kernel.
- Batch and spatial dimensions stay symbolic: the mask shape is computed from ``Shape(X)``.

This module is pure (no HTTP, no store, no layer resolution): a ``GraphSpec`` in, a
``ModelProto`` out. bfloat16 is refused: onnxruntime has no CPU kernel for ``Where`` or
``Div`` in bfloat16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, cast

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service import __version__
from service.core import kernel
from service.core.config import DataFormat, DropoutConfig, Kind
from service.core.dtypes import DTYPES
from service.onnx import division, stream
from service.onnx.builder import GraphBuilder
from service.params import DEFAULT_MASK, MaskForm

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
#: The graph input that switches training on (shared by every layer a model composes).
TRAINING_MODE: Final = "training_mode"
#: The training branch's keep mask: the serving variant feeds it in place of the draws.
MASK_OUTPUT: Final = "mask_train"


@dataclass(frozen=True, slots=True)
class GraphSpec:
    """What a graph is built from (the user's seed and the layer's spec go to metadata)."""

    config: DropoutConfig
    rank: int
    dtype: str
    opset: int
    stream_seed: int
    mask: MaskForm = DEFAULT_MASK


# -- the graph ---------------------------------------------------------------------------


def build_model(spec: GraphSpec) -> onnx.ModelProto:
    """The model for a graph spec; no checks of opset or dtype range (see ``export_layer``)."""
    config, elem = spec.config, ONNX_DTYPES[spec.dtype]
    x_dims, mask_dims = dims(config, spec.rank)
    take, fixed = _mask_template(config, spec.rank)
    initializers = []
    if spec.mask == "dropout":  # false unless fed; a portable graph takes it as a plain input
        initializers.append(numpy_helper.from_array(np.array(False), TRAINING_MODE))
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
            [TRAINING_MODE],
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
            helper.make_tensor_value_info(TRAINING_MODE, TensorProto.BOOL, []),
        ],
        outputs=[
            helper.make_tensor_value_info("Y", elem, x_dims),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, mask_dims),
        ],
        initializer=initializers,
        doc_string=_GRAPH_DOC[spec.mask],
    )
    opsets = [helper.make_opsetid("", spec.opset)]
    model = helper.make_model(
        graph,
        opset_imports=opsets,
        ir_version=helper.find_min_ir_version_for(opsets),
        producer_name=PRODUCER,
        producer_version=__version__,
        doc_string=f"{config.kind.value}, rate {config.rate}: Keras dropout, bit for bit "
        f"as the spatial-dropout service computes it ({_WHERE[spec.mask]}).",
    )
    return model


_OUTPUTS_DOC: Final = "Outputs: Y; mask (true = kept), the keep mask in its broadcast shape."
_GRAPH_DOC: Final[dict[str, str]] = {
    "dropout": f"Inputs: X; training_mode (bool scalar, default false: Y is X). {_OUTPUTS_DOC}",
    "portable": f"Inputs: X; training_mode (bool scalar, false: Y is X). {_OUTPUTS_DOC}",
}
_WHERE: Final[dict[str, str]] = {
    "dropout": "onnxruntime's CPU build on Linux",
    "portable": "on any ONNX runtime: the mask is computed in the graph",
}


def _training_branch(spec: GraphSpec, mask_shape: str) -> onnx.GraphProto:
    config, elem = spec.config, ONNX_DTYPES[spec.dtype]
    dtype = DTYPES[spec.dtype]
    outputs = [
        helper.make_tensor_value_info("Y_train", elem, None),
        helper.make_tensor_value_info(MASK_OUTPUT, TensorProto.BOOL, None),
    ]
    if config.rate == 0:  # the kernel's identity: no draws at all
        nodes = [
            helper.make_node("Identity", ["X"], ["Y_train"]),
            _filled(mask_shape, MASK_OUTPUT, TensorProto.BOOL, True),
        ]
        return helper.make_graph(nodes, "train", [], outputs)
    if np.float32(config.rate) >= 1:
        # onnxruntime refuses ratio >= 1; the kernel's mask (u >= 1.0f) is all false here.
        nodes = [
            _filled("x_shape", "Y_train", elem, 0.0),
            _filled(mask_shape, MASK_OUTPUT, TensorProto.BOOL, False),
        ]
        return helper.make_graph(nodes, "train", [], outputs)
    g = GraphBuilder("train")
    keep = kernel.keep_factor(config.rate, dtype)
    # float16 divides in float32 and rounds once, as the kernel does (its keep factor is the
    # float16 value, widened exactly).
    wide = spec.dtype == "float16"
    x = g.op("Cast", "X", output="x_wide", to=TensorProto.FLOAT) if wide else "X"
    keep_in = np.float32(keep) if wide else cast("np.floating[Any]", dtype.type(keep))
    if spec.mask == "portable":
        stream.keep_mask(g, mask_shape, spec.stream_seed, config.rate, MASK_OUTPUT)
        scaled = division.quotient(g, x, keep_in, reference=x)
    else:
        g.nodes.append(_filled(mask_shape, "ones", TensorProto.FLOAT, 1.0))
        ratio = g.const(np.array(config.rate, dtype=np.float32), name="ratio")
        g.nodes.append(
            helper.make_node(
                "Dropout",
                ["ones", ratio, TRAINING_MODE],
                ["ones_dropped", MASK_OUTPUT],
                seed=spec.stream_seed,
            )
        )
        scaled = g.op("Div", x, g.const(np.array(keep_in), name="keep"), output="scaled")
    if wide:
        scaled = g.op("Cast", scaled, to=elem, output="scaled_narrow")
    # Where(dropped, 0, scaled), not Where(mask, scaled, 0): onnxruntime's CPU Where selects
    # each input against a +0.0 default and merges with ``x_sel != 0 ? x_sel : y_sel``, so a
    # -0.0 taken from its X input comes out +0.0; taken from its Y input it stays -0.0. Xor,
    # not Not: onnxruntime's NotWhereFusion would swap the inputs back.
    dropped = g.op("Xor", MASK_OUTPUT, g.const(np.array(True), name="true"), output="dropped")
    zero = g.const(np.array(0, dtype=dtype), name="zero")
    g.op("Where", dropped, zero, scaled, output="Y_train")
    return helper.make_graph(g.nodes, "train", [], outputs, initializer=g.initializers)


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


_SPATIAL_NAMES: Final[dict[int, list[str | int]]] = {
    3: ["L"],
    4: ["H", "W"],
    5: ["D", "H", "W"],
}


def dims(config: DropoutConfig, rank: int) -> tuple[list[str | int], list[str | int]]:
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

"""Export a layer as an ONNX model: the graph of ``service.onnx.graph`` and its metadata.

This module resolves what a user asks (a stored layer or a spec, a seed, an opset, a dtype, a
rank, a mask form) into a ``GraphSpec``, refuses what cannot be built, and records the seed,
the stream seed, the layer and the mask form in the model's ``metadata_props``.
"""

from __future__ import annotations

import json
from typing import Any, Final

import onnx
from onnx import helper

from service import __version__
from service.core import rng
from service.core.bounds import MAX_DIM, MAX_RANK
from service.core.config import DropoutConfig
from service.errors import InvalidSpec, RequestValidation, SeedRequired, UnsupportedOnnxDtype
from service.layers.resolve import DEFAULT_NAMES, ResolvedSpec, dropout_config
from service.layers.spec import Layer
from service.onnx.graph import ONNX_DTYPES, REFUSED_DTYPES, GraphSpec, build_model
from service.onnx.opsets import DEFAULT_OPSET, check_opset
from service.params import DEFAULT_MASK, MaskForm

DEFAULT_DTYPE: Final = "float32"


# -- the entry point ---------------------------------------------------------------------


def export_layer(
    layer: Layer | ResolvedSpec,
    *,
    seed: int | None = None,
    opset: int = DEFAULT_OPSET,
    dtype: str = DEFAULT_DTYPE,
    rank: int | None = None,
    mask: MaskForm = DEFAULT_MASK,
) -> onnx.ModelProto:
    """The model of ``layer`` for the user seed ``seed`` (default: the layer's own), its keep
    mask drawn by the Dropout operator or computed in the graph (``mask``).

    ``rank`` is needed for element-wise dropout only (see ``model_rank``).
    """
    check_opset(opset)
    check_dtype(dtype)
    config = dropout_config(layer)
    rank = model_rank(config, rank)
    used = export_seed(layer, seed)
    spec = GraphSpec(config, rank, dtype, opset, rng.mix_seed(used), mask)
    model = build_model(spec)
    helper.set_model_props(
        model,
        {
            "seed": str(used),
            "stream_seed": str(rng.mix_seed(used)),
            "layer": json.dumps(spec_dict(layer), sort_keys=True, separators=(",", ":")),
            "producer_version": __version__,
            "mask": mask,
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


def check_dtype(dtype: str) -> None:
    """Refuse a dtype the model cannot be run exactly in."""
    if dtype not in ONNX_DTYPES:
        raise UnsupportedOnnxDtype(dtype, REFUSED_DTYPES.get(dtype, "not a float dtype"))


def spec_dict(layer: Layer | ResolvedSpec) -> dict[str, Any]:
    """The layer as a JSON object, the form a model's metadata records it in."""
    if isinstance(layer, Layer):
        return layer.model_dump(mode="json")
    data = layer.as_dict()
    data["kind"] = layer.kind.value
    data["data_format"] = None if layer.data_format is None else layer.data_format.value
    return data


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

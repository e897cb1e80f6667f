"""What /apply does once HTTP is out of the way: pick the layer and seed, run the engine.

Shared by every protocol that runs a layer (the JSON and .npy forms of /apply today).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from service import telemetry
from service.core import kernel
from service.core.config import DropoutConfig
from service.layers.resolve import ResolvedSpec, dropout_config
from service.layers.spec import Layer
from service.onnx.engine import OnnxEngine

#: Seeds the server draws stay below 2**53, so a JavaScript client can replay them exactly.
DRAWN_SEED_BITS: Final = 53

#: What runs a layer: the numpy kernel, or the layer's exported graph in onnxruntime.
Engine = Literal["numpy", "onnxruntime"]


@dataclass(frozen=True, slots=True)
class Applied:
    output: NDArray[np.generic]
    mask: NDArray[np.bool_]
    seed: int
    layer_name: str | None
    config: DropoutConfig

    def mask_matrix(self) -> NDArray[np.bool_]:
        return kernel.mask_matrix(self.config, self.mask)


def choose_seed(requested: int | None, layer_seed: int | None) -> int:
    """The request's seed wins, then the layer's; else a fresh one from OS entropy."""
    if requested is not None:
        return requested
    if layer_seed is not None:
        return layer_seed
    return secrets.randbits(DRAWN_SEED_BITS)


def layer_name(layer: Layer | ResolvedSpec) -> str | None:
    """A stored layer's name; an inline spec's own name, or None: nothing was stored, so a
    generated name would name no layer."""
    return layer.name


def apply_layer(
    layer: Layer | ResolvedSpec,
    x: NDArray[np.generic],
    *,
    training: bool,
    seed: int | None,
    sample_offset: int,
    onnx: OnnxEngine | None = None,
    in_place: bool = False,
) -> Applied:
    """Run ``layer`` on ``x``; the answer carries the seed used so the call can be replayed.

    With ``onnx``, the layer runs through its exported graph in onnxruntime (same answer).
    ``in_place`` lets the numpy kernel write its output over ``x`` (when x is writable): the
    caller gives up ``x``, and a large tensor needs no second buffer.
    """
    used = choose_seed(seed, layer.seed)
    config = dropout_config(layer)
    if onnx is not None:
        result = onnx.apply(config, x, training=training, seed=used, sample_offset=sample_offset)
    else:
        out = x if in_place and x.flags.writeable else None
        result = kernel.apply(
            config, x, training=training, seed=used, sample_offset=sample_offset, out=out
        )
    telemetry.record_tensors(x.nbytes, result.output.nbytes)
    return Applied(result.output, result.mask, used, layer_name(layer), config)

"""The dropout kernel: mask shapes, the draw numbering shared with onnxruntime, and the output.

Everything here is a pure function of (layer config, input, training, seed, sample_offset).
The mask is a keep mask (True: the cell is kept) of a shape that broadcasts to the input:
``(N, 1, ..., 1, C)`` or ``(N, C, 1, ..., 1)`` for the spatial kinds, the input's shape or its
``noise_shape`` for ``dropout``.

Draw numbering, the contract with an exported graph: the mask is flattened in row-major order;
its flat element j, in a batch that starts at sample ``sample_offset``, takes draw
``sample_offset * S + j + 1`` of the stream ``rng.mix_seed(seed)``, where S is the size of
one sample's part of the mask (the product of its shape without the first axis). A spatial
layer thus decides (sample i, channel c) with draw ``(sample_offset + i) * C + c + 1`` in
either data format, which is what onnxruntime's Dropout draws for a ``ConstantOfShape`` of the
mask shape on the first run of a fresh session with ``seed = mix_seed(seed)``. A ``dropout``
mask whose noise_shape fixes the first axis to an integer has no batch axis: it is the same
for every sample, and ``sample_offset`` does not move it.

A rank-0 input is allowed for ``dropout`` (element-wise, as Keras allows); its mask has shape
``()`` and no batch axis, and a layer with ``batch_size`` refuses it (``InvalidShape``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
from numpy.typing import NDArray

from service.core import rng
from service.core.config import DataFormat, DropoutConfig, Kind
from service.core.dtypes import DTYPES
from service.errors import (
    BatchSizeMismatch,
    InvalidShape,
    NoiseShapeMismatch,
    RankMismatch,
    UnsupportedDtype,
)

_SUPPORTED = frozenset(DTYPES.values())
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
#: The unsigned integer type of each float width: dropped elements are zeroed through it.
_BITS: dict[int, type[np.unsignedinteger[Any]]] = {2: np.uint16, 4: np.uint32, 8: np.uint64}


@dataclass(frozen=True, slots=True)
class DropoutResult:
    """The output tensor and the keep mask (read-only, of ``mask_shape``) that produced it."""

    output: NDArray[Any]
    mask: NDArray[np.bool_]


def mask_shape(config: DropoutConfig, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The keep mask's shape for this input, after checking the input fits the layer."""
    rank = len(input_shape)
    expected = config.kind.rank
    if expected is not None and rank != expected:
        raise RankMismatch(config.name, expected, input_shape)
    if config.batch_size is not None:
        if rank == 0:
            raise InvalidShape(
                f'Layer "{config.name}" was built with batch_size={config.batch_size}, '
                "but the input is a scalar (rank 0) with no batch dimension."
            )
        if input_shape[0] != config.batch_size:
            raise BatchSizeMismatch(config.name, config.batch_size, input_shape[0])
    if config.kind is Kind.DROPOUT:
        return _noise_mask_shape(config, input_shape)
    batch, channels = _batch_and_channels(config.data_format, input_shape)
    ones = (1,) * (rank - 2)
    if config.data_format is DataFormat.CHANNELS_FIRST:
        return (batch, channels, *ones)
    return (batch, *ones, channels)


def _batch_and_channels(data_format: DataFormat, shape: tuple[int, ...]) -> tuple[int, int]:
    channel_axis = 1 if data_format is DataFormat.CHANNELS_FIRST else len(shape) - 1
    return shape[0], shape[channel_axis]


def _noise_mask_shape(config: DropoutConfig, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    noise = config.noise_shape
    if noise is None:
        return input_shape
    if len(noise) != len(input_shape):
        raise NoiseShapeMismatch(
            f'Layer "{config.name}" has noise_shape={_show(noise)} with {len(noise)} '
            f"dimension(s), but its input has {len(input_shape)}: shape {_show(input_shape)}."
        )
    shape: list[int] = []
    for axis, (want, size) in enumerate(zip(noise, input_shape, strict=True)):
        if want is None:
            shape.append(size)
        elif want in (1, size):
            shape.append(want)
        else:
            raise NoiseShapeMismatch(
                f'Layer "{config.name}" has noise_shape={_show(noise)}, which does not broadcast '
                f"to the input shape {_show(input_shape)}: dimension {axis} is {want}, "
                f"but must be 1, None or {size}."
            )
    return tuple(shape)


def _show(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _batch_indexed(config: DropoutConfig, shape: tuple[int, ...]) -> bool:
    """Whether the mask's first axis is the batch axis, so sample_offset moves its draws."""
    if not shape:
        return False
    noise = config.noise_shape
    return not (config.kind is Kind.DROPOUT and noise is not None and noise[0] is not None)


def keep_mask_for(
    config: DropoutConfig, input_shape: tuple[int, ...], seed: int, sample_offset: int = 0
) -> NDArray[np.bool_]:
    """The keep mask (True: kept) for an input of this shape, the user's seed and offset."""
    if sample_offset < 0:
        raise ValueError(f"sample_offset must be >= 0, got {sample_offset}")
    shape = mask_shape(config, input_shape)
    per_sample = math.prod(shape[1:])
    first = sample_offset * per_sample + 1 if _batch_indexed(config, shape) else 1
    flat = rng.keep_mask(rng.mix_seed(seed), first, math.prod(shape), config.rate)
    return flat.reshape(shape)


def keep_factor(rate: float, dtype: np.dtype[Any]) -> np.generic:
    """``1 - rate`` computed in float64, then correctly rounded once to ``dtype``.

    numpy rounds float64 to float16 and float32 directly; ml_dtypes rounds float64 to
    bfloat16 through float32, which can round twice. Rounding to float32 *to odd* first (the
    last bit made odd when inexact) keeps the information needed, so the second rounding is
    correct (24 >= 8 + 2 bits).
    """
    keep = 1.0 - rate
    result: np.generic
    if dtype != _BFLOAT16:
        result = dtype.type(keep)
        return result
    wide = np.float32(keep)
    bits = int(wide.view(np.uint32))
    if float(wide) != keep and bits % 2 == 0:
        bits += 1 if abs(keep) > abs(float(wide)) else -1
        wide = np.uint32(bits).view(np.float32)
    result = dtype.type(wide)
    return result


def apply(
    config: DropoutConfig,
    x: NDArray[Any],
    *,
    training: bool,
    seed: int,
    sample_offset: int = 0,
    out: NDArray[Any] | None = None,
) -> DropoutResult:
    """Dropout of ``x``: Keras 3's values, onnxruntime's mask.

    Identity (``output is x``, no copy, every bit kept, ``out`` untouched) in inference mode
    or at rate 0; always use ``result.output``. In training mode each dropped mask cell is
    exactly +0.0, whatever x holds there (NaN and inf included), and each kept element is
    ``x / keep_factor(rate, x.dtype)``, correctly rounded in x's dtype. ``out`` (x's shape
    and dtype, writable; may be x itself) receives the output instead of a new array.
    """
    dtype = x.dtype
    if dtype not in _SUPPORTED or not dtype.isnative:
        raise UnsupportedDtype(dtype)
    if not training or config.rate == 0:
        shape = mask_shape(config, x.shape)
        return DropoutResult(output=x, mask=np.broadcast_to(np.True_, shape))
    if out is None:
        out = np.empty_like(x)
    elif out.shape != x.shape or out.dtype != dtype or not out.flags.writeable:
        raise ValueError(
            f"out must be a writable {dtype} array of shape {x.shape}, "
            f"got {out.dtype} {out.shape} (writable={out.flags.writeable})"
        )
    mask = keep_mask_for(config, x.shape, seed, sample_offset)
    mask.flags.writeable = False
    # One division over everything (vectorised, no masked loop), then dropped elements get
    # all-zero bits, i.e. +0.0, by multiplying the bit pattern by the 0/1 mask (broadcast).
    keep = keep_factor(config.rate, dtype)
    # No warnings: overflow to inf is the IEEE result, and at rate 1 (keep 0, every cell
    # dropped) x / 0 is discarded.
    with np.errstate(all="ignore"):
        if dtype.itemsize == 2:
            # float16 and bfloat16 divide in float32, rounded once to the dtype: this is the
            # correctly rounded quotient, because float32 has at least 2p + 2 bits for both
            # (24 >= 2*11 + 2, 24 >= 2*8 + 2) and covers their exponent ranges, so the double
            # rounding is innocuous for a division (Figueroa, 1995). It is also what their own
            # loops do, only faster (ml_dtypes' bfloat16 loop is scalar).
            np.divide(x, np.float32(keep), out=out, dtype=np.float32, casting="unsafe")
        else:
            np.divide(x, keep, out=out)
    bits = out.view(_BITS[dtype.itemsize])
    # A broadcast mask is small: cast it once rather than on the fly in every inner loop.
    factor = mask if mask.size == out.size else mask.astype(bits.dtype)
    np.multiply(bits, factor, out=bits)
    return DropoutResult(output=out, mask=mask)


def mask_matrix(config: DropoutConfig, mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The mask as samples x channels for the spatial kinds (singleton axes dropped);
    a dropout layer's mask as it is."""
    if config.kind is Kind.DROPOUT:
        return mask
    batch, channels = _batch_and_channels(config.data_format, mask.shape)
    return mask.reshape(batch, channels)

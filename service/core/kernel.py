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

import functools
import math
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
from numpy.typing import NDArray

from service.core import fastkernel, rng
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


#: Requests repeat a few (layer, shape) pairs: each is worked out once (a refusal is not kept).
@functools.lru_cache(maxsize=1024)
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


def first_draw(config: DropoutConfig, shape: tuple[int, ...], sample_offset: int) -> int:
    """The stream draw that decides the mask's first element, for a batch starting at sample
    ``sample_offset`` (``shape`` is the mask's): ``sample_offset * S + 1`` when the mask's
    first axis is the batch axis, else 1 (a rank-0 mask, or a fixed ``noise_shape[0]``)."""
    if sample_offset < 0:
        raise ValueError(f"sample_offset must be >= 0, got {sample_offset}")
    if not shape:
        return 1
    noise = config.noise_shape
    if config.kind is Kind.DROPOUT and noise is not None and noise[0] is not None:
        return 1
    return sample_offset * math.prod(shape[1:]) + 1


def keep_mask_for(
    config: DropoutConfig, input_shape: tuple[int, ...], seed: int, sample_offset: int = 0
) -> NDArray[np.bool_]:
    """The keep mask (True: kept) for an input of this shape, the user's seed and offset."""
    shape = mask_shape(config, input_shape)
    first = first_draw(config, shape, sample_offset)
    flat = rng.keep_mask(rng.mix_seed(seed), first, math.prod(shape), config.rate)
    return flat.reshape(shape)


@functools.lru_cache(maxsize=256)
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
    keep = keep_factor(config.rate, dtype)
    if fastkernel.train(x, out, mask, keep, _quotient_table):
        return DropoutResult(output=out, mask=mask)  # one compiled pass, the same bits
    # No warnings: overflow to inf is the IEEE result, and at rate 1 (keep 0, every cell
    # dropped) x / 0 is discarded.
    with np.errstate(all="ignore"):
        if (
            config.kind is Kind.DROPOUT
            or x.nbytes <= _BLOCK_BYTES  # fits in cache already: two plain passes are cheapest
            or not x.flags.c_contiguous
            or not out.flags.c_contiguous
        ):
            _divide(x, keep, out)
            _zero_dropped(out, mask)
        else:
            _spatial_train(config.data_format, x, out, mask, keep)
    return DropoutResult(output=out, mask=mask)


#: Work on blocks of about this many bytes, so that the zeroing pass after the division
#: finds the block still in L2 cache (512 KiB per core here) and memory is streamed once.
_BLOCK_BYTES = 256 * 1024


def _divide(x: NDArray[Any], keep: np.generic, out: NDArray[Any]) -> None:
    """``out = x / keep``, correctly rounded in x's dtype."""
    if fastkernel.divide(x, keep, out, _quotient_table):
        return
    if x.dtype.itemsize != 2:
        np.divide(x, keep, out=out)
    elif x.size < _TABLE_MIN_SIZE:
        _divide_half(x, keep, out)
    else:
        # numpy's float16 and bfloat16 casts are scalar loops (~10 ns an element here); a
        # 2-byte float has only 65536 values, so the quotient of every one is computed once
        # by the same division and the tensor is divided by looking its bits up.
        table = _quotient_table(x.dtype, keep.item())
        np.take(table, x.view(np.uint16), out=out.view(np.uint16))


def _divide_half(x: NDArray[Any], keep: np.generic, out: NDArray[Any]) -> None:
    # float16 and bfloat16 divide in float32, rounded once to the dtype: this is the
    # correctly rounded quotient, because float32 has at least 2p + 2 bits for both
    # (24 >= 2*11 + 2, 24 >= 2*8 + 2) and covers their exponent ranges, so the double
    # rounding is innocuous for a division (Figueroa, 1995). It is also what their own
    # loops do, only faster (ml_dtypes' bfloat16 loop is scalar).
    np.divide(x, np.float32(keep), out=out, dtype=np.float32, casting="unsafe")


#: Below this many elements a 2-byte tensor is divided directly: building a table costs
#: 65536 divisions.
_TABLE_MIN_SIZE = 1 << 16


@functools.lru_cache(maxsize=32)
def _quotient_table(dtype: np.dtype[Any], keep: float) -> NDArray[np.uint16]:
    """The bits of ``v / keep`` for every 2-byte float ``v``, indexed by the bits of ``v``."""
    values = np.arange(1 << 16, dtype=np.uint16).view(dtype)
    quotients = np.empty_like(values)
    with np.errstate(all="ignore"):
        _divide_half(values, dtype.type(keep), quotients)
    table = quotients.view(np.uint16)
    table.flags.writeable = False
    return table


def _zero_dropped(out: NDArray[Any], mask: NDArray[np.bool_]) -> None:
    """Give dropped elements all-zero bits (+0.0, whatever they held) by multiplying the bit
    pattern by the 0/1 mask, broadcast: no branch, no masked loop."""
    bits = out.view(_BITS[out.dtype.itemsize])
    # A broadcast mask is small: cast it once rather than on the fly in every inner loop.
    factor = mask if mask.size == out.size else mask.astype(bits.dtype)
    np.multiply(bits, factor, out=bits)


def _spatial_train(
    data_format: DataFormat,
    x: NDArray[Any],
    out: NDArray[Any],
    mask: NDArray[np.bool_],
    keep: np.generic,
) -> None:
    """Training output of a spatial layer at memory speed: x is read once, out written once.

    Both layouts are seen as (rows, S, Cc) with the mask varying over rows and Cc only:
    channels_first as (N*C, spatial, 1), each row one whole feature map; channels_last as
    (N, spatial, C). Feature maps of channels_first are contiguous, so a run of kept maps is
    one division and a run of dropped maps one fill that never reads x. Otherwise the tensor
    is divided and masked a cache-sized block at a time.
    """
    batch, channels = _batch_and_channels(data_format, x.shape)
    if data_format is DataFormat.CHANNELS_FIRST:
        rows, width = batch * channels, 1
    else:
        rows, width = batch, channels
    if x.size == 0:
        return
    spatial = x.size // (rows * width)
    x3 = x.reshape(rows, spatial, width)
    out3 = out.reshape(rows, spatial, width)
    keep_rows = mask.reshape(rows, width)
    row_bytes = spatial * width * x.itemsize
    if width == 1 and row_bytes >= _BLOCK_BYTES:
        _runs_of_maps(x3, out3, keep_rows[:, 0], keep)
        return
    factor = keep_rows.astype(_BITS[x.itemsize])[:, None, :]
    bits3 = out3.view(factor.dtype)
    if row_bytes >= _BLOCK_BYTES:
        _long_rows(x3, out3, keep_rows, keep)
        return
    step = max(1, _BLOCK_BYTES // row_bytes)  # short rows: several rows per block
    for row in range(0, rows, step):
        block = slice(row, row + step)
        _divide(x3[block], keep, out3[block])
        np.multiply(bits3[block], factor[block], out=bits3[block])


def _long_rows(
    x3: NDArray[Any], out3: NDArray[Any], keep_rows: NDArray[np.bool_], keep: np.generic
) -> None:
    """channels_last, one sample at least a block long: each sample in cache-sized blocks.

    The mask pattern of a sample (its C keep flags, repeated) is laid out flat once, so that
    zeroing is a long contiguous multiply rather than numpy's slow inner loop of length C.
    """
    rows, spatial, width = x3.shape
    bits_type = _BITS[x3.itemsize]
    step = max(1, _BLOCK_BYTES // (width * x3.itemsize)) * width
    pattern = np.empty(min(step, spatial * width), dtype=bits_type)
    for row in range(rows):
        flags = keep_rows[row]
        x_row, out_row = x3[row].reshape(-1), out3[row].reshape(-1)
        if flags.all():
            _divide(x_row, keep, out_row)
            continue
        if not flags.any():
            out_row.fill(0)
            continue
        _tile_into(pattern, flags)
        bits_row = out_row.view(bits_type)
        for at in range(0, x_row.size, step):
            block = slice(at, at + step)
            _divide(x_row[block], keep, out_row[block])
            np.multiply(bits_row[block], pattern[: bits_row[block].size], out=bits_row[block])


def _tile_into(buffer: NDArray[Any], tile: NDArray[Any]) -> None:
    """Fill ``buffer`` with ``tile`` repeated, by doubling in place: a few in-cache copies and
    no allocation (a fresh array per sample would cost page faults)."""
    filled = tile.size
    buffer[:filled] = tile
    while filled < buffer.size:
        more = min(filled, buffer.size - filled)
        buffer[filled : filled + more] = buffer[:more]
        filled += more


def _runs_of_maps(
    x3: NDArray[Any], out3: NDArray[Any], kept: NDArray[np.bool_], keep: np.generic
) -> None:
    """channels_first with large maps: divide each run of kept maps, zero-fill each run of
    dropped ones (writing only: their input is never read)."""
    edges = np.flatnonzero(kept[1:] != kept[:-1]) + 1
    starts = [0, *edges.tolist()]
    stops = [*edges.tolist(), len(kept)]
    for start, stop in zip(starts, stops, strict=True):
        if kept[start]:
            _divide(x3[start:stop], keep, out3[start:stop])
        else:
            out3[start:stop].fill(0)


def mask_matrix(config: DropoutConfig, mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The mask as samples x channels for the spatial kinds (singleton axes dropped);
    a dropout layer's mask as it is."""
    if config.kind is Kind.DROPOUT:
        return mask
    batch, channels = _batch_and_channels(config.data_format, mask.shape)
    return mask.reshape(batch, channels)

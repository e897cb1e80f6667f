"""kernel.apply against np.copyto of the same tensor, in process."""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np

from bench.common import F32_SHAPES, MIB, SEED, Context, layer_config, log, size_label, tensor
from bench.stats import Row, Stat, Target, compare, timed
from service.core import kernel
from service.core.config import DataFormat


def run(ctx: Context) -> list[Row]:
    """kernel.apply (training) with out= a preallocated buffer, and in place (out=x), against
    np.copyto of the same tensor; the ratio is copy time / kernel time (1.0: copy speed)."""
    rows: list[Row] = []
    min_sample = 0.01 if ctx.args.quick else 0.05
    for nbytes, shape in F32_SHAPES.items():
        for dtype in (np.float32, np.float16, ml_dtypes.bfloat16):
            for data_format in (DataFormat.CHANNELS_LAST, DataFormat.CHANNELS_FIRST):
                n, h, w, c = shape
                if np.dtype(dtype).itemsize == 2:
                    n *= 2
                dims = (n, h, w, c) if data_format is DataFormat.CHANNELS_LAST else (n, c, h, w)
                name = f"{np.dtype(dtype).name} {data_format.value} {size_label(nbytes)}"
                log(f"kernel {name} {dims}")
                rows += _kernel_case(ctx, name, dims, dtype, data_format, nbytes, min_sample)
    return rows


def _kernel_case(
    ctx: Context,
    name: str,
    dims: tuple[int, ...],
    dtype: type[np.floating[Any]],
    data_format: DataFormat,
    nbytes: int,
    min_sample: float,
) -> list[Row]:
    config = layer_config(data_format)
    src = tensor(dims, dtype)
    assert src.nbytes == nbytes, (src.nbytes, nbytes)
    x, out, dst = np.empty_like(src), np.empty_like(src), np.empty_like(src)
    for buffer in (x, out, dst):  # fault every page in before timing
        np.copyto(buffer, src)
    seed = SEED

    def copy() -> None:
        np.copyto(dst, src)

    def to_buffer() -> None:
        kernel.apply(config, src, training=True, seed=seed, out=out)

    def in_place() -> None:
        kernel.apply(config, x, training=True, seed=seed, out=x)

    for fn in (copy, to_buffer, in_place):  # warm up
        fn()
    inner = max(1, math.ceil(min_sample / timed(copy)))
    copies, buffered, in_places = Stat(), Stat(), Stat()
    for run in range(ctx.repeat):
        seed = SEED + run  # another mask each run: the spread covers the mask's effect
        copies.add(timed(copy, inner))
        buffered.add(timed(to_buffer, inner))
        np.copyto(x, src)  # in place grows x by 1/keep per call: start each run afresh
        in_places.add(timed(in_place, inner))
    # Half precision, the dtype inference runs in, over memory; float32 where it fits in cache.
    half = np.dtype(dtype).itemsize == 2
    if half and nbytes >= 128 * MIB:
        buffered_target, in_place_target = None, Target(0.6, at_least=True)
    elif not half and nbytes <= 4 * MIB:
        buffered_target = in_place_target = Target(0.5, at_least=True)
    else:
        buffered_target = in_place_target = None
    return [
        compare(
            f"kernel {name}, out= buffer",
            buffered,
            "np.copyto",
            copies,
            higher_is_better=True,
            what="of copy speed",
            target=buffered_target,
        ),
        compare(
            f"kernel {name}, in place (out=x)",
            in_places,
            "np.copyto",
            copies,
            higher_is_better=True,
            what="of copy speed",
            target=in_place_target,
        ),
    ]

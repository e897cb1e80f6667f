"""The training output in one compiled pass, and a small mask's draws, when the optional
extension is built.

``service.core._fastkernel`` (``_fastkernel.c``, built by ``pip install`` when a C compiler is
there, skipped when not) reads x once and writes the output once: ``x / keep`` where the mask
keeps, +0.0 where it drops, with the arithmetic of the numpy kernel (service/core/kernel.py),
which stays the reference and the fallback. On x86_64 with AVX2 and F16C its loops are
vectorised, float16 and bfloat16 included (numpy's casts for them are scalar); elsewhere
float16 uses the numpy kernel's own quotient table.

It also draws a small keep mask (``keep_mask``): the stream of service/core/rng.py stepped
draw by draw, which for a few dozen draws beats numpy's per-call overhead many times over.
rng.py's numpy code stays the reference, and draws the large masks.

The tensor is seen as (rows, spatial, width) with the mask varying over rows and width only:
any mask whose broadcast axes form one block, which covers every spatial layer and
``dropout`` with or without most noise shapes. Another mask is divided here and zeroed by numpy.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

import ml_dtypes
import numpy as np
from numpy.typing import NDArray


def _load() -> ModuleType | None:
    try:
        return importlib.import_module("service.core._fastkernel")
    except ImportError:  # not built (no compiler at install time): the numpy kernel does it all
        return None


_native = _load()

#: Whether the vectorised (AVX2 + F16C) loops run; without them the portable C loops do.
simd: bool = bool(_native is not None and _native.has_simd())

_CODES = {
    np.dtype(np.float16): 0,
    np.dtype(ml_dtypes.bfloat16): 1,
    np.dtype(np.float32): 2,
    np.dtype(np.float64): 3,
}
_BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}

#: ``quotients(dtype, keep)``: the float16 quotient table, 65536 uint16 bit patterns.
Quotients = Callable[[np.dtype[Any], float], NDArray[np.uint16]]


def available() -> bool:
    """Whether the compiled kernel is importable here."""
    return _native is not None


@functools.lru_cache(maxsize=1024)
def rows_and_width(shape: tuple[int, ...], mask_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(rows, width) such that x is (rows, spatial, width) and the mask (rows, 1, width), or
    None when the mask's broadcast axes are not one block (e.g. ``(1, H, 1)``)."""
    if len(shape) != len(mask_shape):
        return None
    kinds = []
    for size, mask_size in zip(shape, mask_shape, strict=True):
        if size == 1:
            continue  # either kind: it changes no product
        kinds.append((mask_size == size, size))
    broadcast = [i for i, (varies, _) in enumerate(kinds) if not varies]
    if not broadcast:
        return 1, math.prod(shape)
    first, last = broadcast[0], broadcast[-1]
    if last - first + 1 != len(broadcast):
        return None
    rows = math.prod(size for _, size in kinds[:first])
    width = math.prod(size for _, size in kinds[last + 1 :])
    return rows, width


def divide(x: NDArray[Any], keep: np.generic, out: NDArray[Any], quotients: Quotients) -> bool:
    """``out = x / keep`` (out may be x); False, out untouched, when this kernel cannot."""
    return _run(x, out, None, keep, quotients)


def train(
    x: NDArray[Any],
    out: NDArray[Any],
    mask: NDArray[np.bool_],
    keep: np.generic,
    quotients: Quotients,
) -> bool:
    """Write the training output of x into out (which may be x); False, out untouched, when
    this kernel cannot (not built, not contiguous, empty, a mask of another form)."""
    return _run(x, out, mask, keep, quotients)


def _run(
    x: NDArray[Any],
    out: NDArray[Any],
    mask: NDArray[np.bool_] | None,
    keep: np.generic,
    quotients: Quotients,
) -> bool:
    if _native is None or x.size == 0 or not (x.flags.c_contiguous and out.flags.c_contiguous):
        return False
    if mask is None:
        flags, rows, width = None, 1, 1
    else:
        layout = rows_and_width(x.shape, mask.shape)
        if layout is None:
            return False
        rows, width = layout
        flags = np.ascontiguousarray(mask).view(np.uint8)
    code = _CODES[x.dtype]
    table = None if simd or code != 0 else quotients(x.dtype, keep.item())
    uint = _BITS[x.itemsize]
    _native.divide_rows(
        code, x.view(uint), out.view(uint), flags, rows, width, float(keep), table, simd
    )
    return True


def keep_mask(first_value: int, count: int, threshold: np.float32) -> NDArray[np.bool_] | None:
    """Whether each of ``count`` draws keeps its element, from the draw whose value is
    ``first_value`` on; None when the extension is not built."""
    if _native is None:
        return None
    mask = np.empty(count, dtype=np.bool_)
    _native.keep_mask(first_value, float(threshold), mask)
    return mask

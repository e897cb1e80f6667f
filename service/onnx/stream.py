"""The keep mask computed inside an ONNX graph: the service's stream with no random operator.

Draw k of stream seed s is ``x_k = s * a**k mod m`` (``service.core.rng``); mask element j
(row-major) takes draw j + 1 and is kept iff ``x_{j+1} >= rng.keep_threshold(rate)``. Three
constant tables factor any draw number below 2**31 (j = 2**22 j2 + 2**11 j1 + j0)::

    x_{j+1} = (s * a**(1 + j0))  *  a**(2**11 j1)  *  a**(2**22 j2)     (mod m)
               table 0, 2048      table 1, 2048      table 2, 512

so the mask is two broadcast modular products: tables 2 x 1 (the rows a mask needs, as many
as 2**22 draws each), sliced to whole rows of 2048 draws, then times table 0, sliced to the
mask's size. Draw counts reach 2**31 (past the stream's period, m - 1) with 4,608 table
entries. Tables 0 and 1 are first cut to the columns a mask uses (a mask of C < 2048 cells
needs C entries of table 0 and one of table 1), so the work is about the mask's size: what a
small mask costs is mostly the ~110 nodes' dispatch.

Why every integer stays below 2**24: runtimes differ in their integer arithmetic (OpenVINO's
CPU plugin narrows int64 to int32 and computes integer Div and Mod in float32), so a residue
below 2**31 lives in three int32 limbs of 11, 11 and 9 bits. A limb product is below 2**22,
a sum of three below 2**24, and ``2**31 = 1 (mod m)`` folds the high limbs back. A limb's
carry is ``t / 2**b`` for ``0 <= t < 2**24``: exact in float32 before it is truncated, so a
runtime that divides integers in float32 gets it right too (each of the five, checked for
every such t).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
from numpy.typing import NDArray

from service.core import rng
from service.onnx.builder import GraphBuilder

#: Bits of the three limbs of a residue below 2**31, low to high.
LIMB_BITS: Final = (11, 11, 9)
_ROW: Final = 1 << 11  # draws per row: the entries of tables 0 and 1
_ROWS2: Final = 1 << 9  # entries of table 2 (2**22 draws each)
#: Added before the divisions that count rows: an int64 Div computed in float32 is then never
#: short (its operand below 2**31 rounds by at most 128), only one row long at worst.
_SLACK: Final = 256

Limbs = tuple[str, str, str]


def limbs_of(values: NDArray[np.int64]) -> tuple[NDArray[np.int32], ...]:
    """Residues below 2**31 as their three int32 limbs."""
    parts, shift = [], 0
    for bits in LIMB_BITS:
        parts.append(((values >> shift) & ((1 << bits) - 1)).astype(np.int32))
        shift += bits
    return tuple(parts)


def tables(stream_seed: int) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Table 0 (``x_{1 + j0}``), table 1 (``a**(2**11 j1)``) and table 2 (``a**(2**22 j2)``)."""
    table0 = rng.minstd_draws(stream_seed, 1, _ROW)
    step1 = pow(rng.MULTIPLIER, _ROW, rng.MODULUS)
    step2 = pow(rng.MULTIPLIER, _ROW * _ROW, rng.MODULUS)
    table1 = np.array([pow(step1, j, rng.MODULUS) for j in range(_ROW)], dtype=np.int64)
    table2 = np.array([pow(step2, j, rng.MODULUS) for j in range(_ROWS2)], dtype=np.int64)
    return table0, table1, table2


def keep_mask(g: GraphBuilder, mask_shape: str, stream_seed: int, rate: float, output: str) -> None:
    """Nodes that write ``output``: the bool keep mask of shape ``mask_shape`` (an int64 1-D
    value of the graph) that ``/apply`` draws from ``stream_seed`` at ``rate``, whose float32
    value must be below 1."""
    table0, table1, table2 = tables(stream_seed)
    row0 = _table(g, table0, (1, _ROW))
    row1 = _table(g, table1, (1, _ROW))
    column2 = _table(g, table2, (_ROWS2, 1))

    size = g.op("ReduceProd", mask_shape, keepdims=1)  # [1], int64
    rows2 = _rows(g, size, _ROW * _ROW)
    rows = _rows(g, size, _ROW)
    zero = axis0 = g.ints(0)
    axis1, row = g.ints(1), g.ints(_ROW)
    flat, column = g.ints(-1), g.ints(-1, 1)

    # A flattened [r, c] product numbers its draws r * c + j: right when c is a whole row of
    # 2048, or when only the first row is kept, which is the case whenever c is cut shorter.
    columns0, columns1 = g.op("Min", size, row), g.op("Min", rows, row)
    row0_used = _each(g, row0, lambda limb: g.op("Slice", limb, zero, columns0, axis1))
    row1_used = _each(g, row1, lambda limb: g.op("Slice", limb, zero, columns1, axis1))
    column2_used = _each(g, column2, lambda limb: g.op("Slice", limb, zero, rows2, axis0))
    high = _modmul(g, column2_used, row1_used)  # [rows2, <=2048]: a**(2**11 (2048 j2 + j1))
    high_column = _each(
        g,
        high,
        lambda limb: g.op(
            "Reshape", g.op("Slice", g.op("Reshape", limb, flat), zero, rows, axis0), column
        ),
    )
    draws = _modmul(g, high_column, row0_used)  # [rows, <=2048]: x_{j+1}, j = 2048 row + col
    kept = _at_least(g, draws, rng.keep_threshold(rate))
    kept_flat = g.op("Slice", g.op("Reshape", kept, flat), zero, size, axis0)
    g.op("Reshape", kept_flat, mask_shape, output=output)


def _table(g: GraphBuilder, values: NDArray[np.int64], shape: tuple[int, int]) -> Limbs:
    low, middle, high = (g.const(limb.reshape(shape)) for limb in limbs_of(values))
    return low, middle, high


def _each(g: GraphBuilder, limbs: Limbs, step: Callable[[str], str]) -> Limbs:
    low, middle, high = (step(limb) for limb in limbs)
    return low, middle, high


def _rows(g: GraphBuilder, size: str, per_row: int) -> str:
    """``ceil(size / per_row)``, or one more (see ``_SLACK``), as an int64 [1]."""
    padded = g.add(size, g.scalar(per_row - 1 + _SLACK, np.int64))
    return g.op("Div", padded, g.scalar(per_row, np.int64))


def _split(g: GraphBuilder, value: str, bits: int) -> tuple[str, str]:
    """``(value mod 2**bits, value div 2**bits)`` for ``0 <= value < 2**24``, exactly."""
    radix = g.scalar(1 << bits, np.int32)
    return g.op("Mod", value, radix), g.op("Div", value, radix)


def _modmul(g: GraphBuilder, x: Limbs, y: Limbs) -> Limbs:
    """``x * y mod m`` in limbs, broadcast. ``y``'s limbs are canonical; ``x``'s low limb may
    be 2048 (as this function's own low limb may be), every other limb below its radix.

    The five limb products' column sums c0..c4 stand at 2**0, 2**11, 2**22, 2**33 = 4 and
    2**44 = 4 * 2**11 (mod m), so the product is d0 + d1 2**11 + d2 2**22 with
    d0 = c0 + 4 c3 < 2**24, d1 = c1 + 4 c4 and d2 = c2. One carry pass leaves limbs and a
    carry out of bit 31 below 2**14, which folds into limb 0 (2**31 = 1); a second pass
    leaves a carry of at most 1, which is added to limb 0 only when limbs 1 and 2 are then
    below 9 and 0: limb 0 at most 2048, and the value below 2**31.
    """
    x0, x1, x2 = x
    y0, y1, y2 = y
    four = g.scalar(4, np.int32)
    c0 = g.mul(x0, y0)
    c1 = g.add(g.mul(x0, y1), g.mul(x1, y0))
    c2 = g.add(g.add(g.mul(x0, y2), g.mul(x1, y1)), g.mul(x2, y0))
    c3 = g.add(g.mul(x1, y2), g.mul(x2, y1))
    c4 = g.mul(x2, y2)
    d0 = g.add(c0, g.mul(four, c3))
    d1 = g.add(c1, g.mul(four, c4))
    low0, carry0 = _split(g, d0, LIMB_BITS[0])
    low1, carry1 = _split(g, g.add(d1, carry0), LIMB_BITS[1])
    low2, carry2 = _split(g, g.add(c2, carry1), LIMB_BITS[2])
    limb0, carry0 = _split(g, g.add(low0, carry2), LIMB_BITS[0])
    limb1, carry1 = _split(g, g.add(low1, carry0), LIMB_BITS[1])
    limb2, carry2 = _split(g, g.add(low2, carry1), LIMB_BITS[2])
    return g.add(limb0, carry2), limb1, limb2


def _at_least(g: GraphBuilder, x: Limbs, bound: int) -> str:
    """``x >= bound`` for x in ``_modmul``'s limbs (value below 2**31, low limb <= 2048).

    With x = 2**11 hi + lo and bound = 2**11 bh + bl, the sign of 2**11 (hi - bh) + lo - bl
    is kept when hi - bh is clipped to [-2, 2] (lo - bl is in [-2047, 2048]), which keeps
    every value below 2**24.
    """
    low, middle, high = x
    hi = g.add(g.mul(high, g.scalar(1 << LIMB_BITS[1], np.int32)), middle)
    bound_hi, bound_lo = divmod(bound, 1 << LIMB_BITS[0])
    gap = g.sub(hi, g.scalar(bound_hi, np.int32))
    gap = g.op("Max", g.op("Min", gap, g.scalar(2, np.int32)), g.scalar(-2, np.int32))
    total = g.add(g.mul(gap, g.scalar(1 << LIMB_BITS[0], np.int32)), low)
    return g.op("Greater", total, g.scalar(bound_lo - 1, np.int32))

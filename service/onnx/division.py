"""``x / keep`` correctly rounded on runtimes whose Div is not IEEE division.

onnxruntime, ``onnx.reference`` and onnxruntime-web divide as IEEE 754 does. OpenVINO's CPU
plugin and tract compute ``x * (1 / keep)``, which differs from ``x / keep`` in the last bit
for about one float32 in ten. The kernel's answer is the IEEE quotient, so a portable graph
asks its runtime once per run: it divides a few probe values for which ``x * (1/keep)`` is
wrong (found at export, mixed with one element of X so that no loader can fold them) and
takes the runtime's Div if the probes come out right, else the division below. On the
runtimes that divide exactly the cost is one Div, as in the Dropout form.

The division without Div, for a finite non-zero x (its sign and the scale come off first):

1. Scale: ``a = |x| * 2**s`` with s chosen so that every step below is exact (no overflow,
   no product below the subnormal grid); the quotient is scaled back at the end, which is
   exact, overflows to inf exactly where IEEE division does, and where the quotient is
   subnormal the candidates below are already on its grid.
2. A candidate ``c = a * r`` (r = the nearest float to 1/keep) is within two units in the
   last place of ``a / keep``, so the correctly rounded quotient is c, its successor or its
   predecessor (on the subnormal grid: c rounded to it, and its two neighbours there).
3. Which one: ``a / keep`` lies above the midpoint ``c + g/2`` iff ``a - (c + g/2) keep`` is
   positive, evaluated exactly: ``c * keep = p + e`` (Dekker's product over a Veltkamp
   split), ``a - p`` is exact (Sterbenz), ``(g/2) keep`` is exact, and the sign of the sum of
   those three terms comes from two error-free sums (TwoSum) whose tails are small enough
   to add exactly. The quotient is never a midpoint (keep's odd significand divides no power
   of two), so there are no ties.

One correction step (``q + (a - q keep) / keep``, rounded twice) is not enough: measured on
every float32 significand, it misses one in 2**23 for about one keep factor in ten, hence
the exact decision above. Zero, inf and NaN are their own quotients. A power-of-two keep
divides exactly either way, but a product with a constant may lose the sign of a zero, so
its slow branch keeps zeros as they are. float16 divides in float32 (as the kernel does):
one rounding after an exact widening.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from onnx import TensorProto, helper

from service.onnx.builder import GraphBuilder


@dataclass(frozen=True, slots=True)
class Format:
    """What the division needs to know of a binary floating-point format."""

    precision: int  # significand bits, the hidden one included
    shift: int  # the scale applied to values outside [2**low, 2**high]
    low: int
    high: int
    subnormal_exponent: int  # the subnormal grid is 2**this
    normal_exponent: int  # the smallest normal is 2**this


FORMATS: Final[dict[str, Format]] = {
    # float32: keep >= 2**-26 (the mask's float32 rate is below 1), so with |x| scaled into
    # [2**-76, 2**64] every product of the exact steps is above 2**-149 and no split overflows.
    "float32": Format(24, 80, -60, 64, -149, -126),
    "float64": Format(53, 600, -900, 900, -1074, -1022),
}


def probes(keep: np.floating[Any], count: int = 4) -> NDArray[Any] | None:
    """Up to ``count`` values x in [1, 2) for which ``x * (1/keep)`` is not ``x / keep``
    (found among 2**17 significands); None when none is."""
    dtype = keep.dtype
    recip = dtype.type(1) / keep
    one = np.array(1, dtype=dtype)
    # Significands from a fixed, spread walk: the same keep always gets the same probes.
    steps = np.arange(1 << 16, dtype=np.int64) * 40503 % (1 << 16)
    x = one + steps.astype(dtype) * np.ldexp(one, -16)
    wrong = x[x * recip != x / keep]
    if not wrong.size:
        x = np.nextafter(x, dtype.type(2))  # other significands, if the walk found none
        wrong = x[x * recip != x / keep]
    return wrong[:count] if wrong.size else None


def quotient(g: GraphBuilder, x: str, keep: np.floating[Any], reference: str) -> str:
    """``x / keep`` correctly rounded on every runtime; ``reference`` is a value of the
    graph computed at run time (X, any shape) that keeps the probe from being folded."""
    dtype = keep.dtype
    power_of_two = float(keep) == 2.0 ** (np.frexp(float(keep))[1] - 1)
    # A one-element probe array of -0.0 alone would be a zero that tract's constant
    # deduplication may take for the layer's +0.0: 1 keeps it two elements long.
    found = np.ones(1, dtype) if power_of_two else probes(keep)
    if found is None:  # no value tells the two divisions apart: always divide exactly
        return corrected(g, x, keep)
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    by_div = helper.make_graph(
        [helper.make_node("Div", [x, g.scalar(keep, dtype)], [f"{g.stem}_q_div"])],
        f"{g.stem}_div",
        [],
        [helper.make_tensor_value_info(f"{g.stem}_q_div", elem, None)],
    )
    inner = GraphBuilder(f"{g.stem}_exact")
    # A power of two divides exactly either way, but a product with a constant may lose
    # the sign of a zero (OpenVINO's x * c + 0): zeros are their own quotients.
    result = _signed_zeros_kept(inner, x, keep) if power_of_two else corrected(inner, x, keep)
    by_steps = helper.make_graph(
        inner.nodes,
        f"{g.stem}_steps",
        [],
        [helper.make_tensor_value_info(result, elem, None)],
        initializer=inner.initializers,
    )
    exact = divides_exactly(g, found, keep, reference)
    return g.op("If", exact, then_branch=by_div, else_branch=by_steps)


def _signed_zeros_kept(g: GraphBuilder, x: str, keep: np.floating[Any]) -> str:
    dtype = keep.dtype
    nonzero = g.op("Greater", g.op("Abs", x), g.scalar(0.0, dtype))
    return g.where(nonzero, g.op("Div", x, g.scalar(keep, dtype)), x)


def divides_exactly(
    g: GraphBuilder, found: NDArray[Any], keep: np.floating[Any], reference: str
) -> str:
    """A bool scalar: does this runtime's Div give the IEEE quotients of the probes, and
    -0.0 for -0.0 (1 / q is then -inf)?"""
    dtype = keep.dtype
    flat = g.op("Reshape", reference, g.ints(-1))
    start = axis = g.ints(0)
    first = g.op("Slice", flat, start, g.ints(1), axis)
    probe = np.append(found, dtype.type(-0.0))
    divided = g.op("Div", g.op("Concat", g.const(probe), first, axis=0), g.scalar(keep, dtype))
    head = g.op("Slice", divided, start, g.ints(len(probe)), axis)
    inverse = g.op("Div", g.scalar(1.0, dtype), head)  # -inf for the -0.0 probe only
    with np.errstate(divide="ignore"):
        expected = np.append(found / keep, dtype.type(1) / dtype.type(-0.0))
    wanted = g.op(
        "Equal",
        g.op("Where", g.const(np.append(np.ones(len(found), bool), False)), head, inverse),
        g.const(expected),
    )
    right = g.op("Cast", wanted, to=TensorProto.INT32)
    return g.op("Equal", g.op("ReduceMin", right, keepdims=0), g.scalar(1, np.int32))


def corrected(g: GraphBuilder, x: str, keep: np.floating[Any]) -> str:
    """The nodes of the division without Div (see the module doc); its output's name."""
    dtype = keep.dtype
    fmt = FORMATS[dtype.name]

    def c(value: float | np.generic) -> str:
        return g.scalar(value, dtype)

    p = fmt.precision
    recip = dtype.type(1) / keep
    magnitude = g.op("Abs", x)
    big = g.op("Greater", magnitude, c(2.0**fmt.high))
    small = g.op("Less", magnitude, c(2.0**fmt.low))

    def scaled(factor: float) -> str:  # |x| * 2**s * factor, exact
        return g.mul(
            magnitude,
            g.where(
                big,
                c(factor * 2.0**-fmt.shift),
                g.where(small, c(factor * 2.0**fmt.shift), c(factor)),
            ),
        )

    # No Mul by a constant near 1 (1/keep and keep are, at small rates): onnxruntime and
    # tract drop a Mul by a constant within float32's epsilon of 1, and tract merges a chain
    # of Muls by constants. So a product with 1/keep or keep is taken of twice (four times)
    # the scaled |x|, with the constant halved: the same rounding, and the doubling is in a
    # Where's constants, which no loader folds into the Mul.
    a, a2, a4 = scaled(1.0), scaled(2.0), scaled(4.0)
    unscale = g.where(big, c(2.0**fmt.shift), g.where(small, c(2.0**-fmt.shift), c(1.0)))
    half_recip = c(recip / 2)
    guess, guess2 = g.mul(a2, half_recip), g.mul(a4, half_recip)  # a / keep; twice it

    # On the subnormal grid of the unscaled quotient (a multiple of 2**grid, here scaled),
    # the candidate is the guess rounded to it; elsewhere the guess itself.
    grid = fmt.subnormal_exponent + fmt.shift
    smallest_normal = c(2.0 ** (fmt.normal_exponent + fmt.shift))
    on_grid = g.op("And", small, g.op("LessOrEqual", guess, smallest_normal))
    steps = g.op("Round", g.mul(guess, c(2.0**-grid)))
    cand = g.where(on_grid, g.mul(steps, c(2.0**grid)), guess)
    cand2 = g.where(on_grid, g.mul(steps, c(2.0 ** (grid + 1))), guess2)
    # The gaps to the neighbours: |c| * 0.75 ulp-factor rounds up to the successor and
    # 0.625 down to the predecessor, in any binade (2**e included, where the gap below halves).
    up = g.sub(g.add(cand, g.mul(cand, c(3.0 * 2.0 ** -(p + 1)))), cand)
    down = g.sub(cand, g.sub(cand, g.mul(cand, c(5.0 * 2.0 ** -(p + 2)))))
    grid_gap = c(2.0**grid)
    up = g.where(on_grid, grid_gap, up)
    down = g.where(on_grid, grid_gap, down)

    product, error = _two_product(g, cand2, dtype.type(keep / 2), fmt)  # cand * keep
    rest = g.sub(a, product)  # exact: product is within a factor 2 of a
    half_keep = c(keep / 2)
    zero = c(0.0)
    above = _sign_positive(g, rest, error, g.mul(up, half_keep), zero)
    below = _sign_positive(g, g.op("Neg", rest), g.op("Neg", error), g.mul(down, half_keep), zero)
    chosen = g.where(above, g.add(cand, up), g.where(below, g.sub(cand, down), cand))
    unscaled = g.mul(chosen, unscale)
    signed = g.where(g.op("Less", x, zero), g.op("Neg", unscaled), unscaled)

    finite = g.op(
        "And",
        g.op("Greater", magnitude, zero),
        g.op("LessOrEqual", magnitude, c(float(np.finfo(dtype).max))),
    )
    # Zeros, infinities and NaN are their own quotients. x is Where's second input, so a -0.0
    # stays negative (onnxruntime's CPU Where loses the sign of a zero in its first), and it
    # is x itself, not x * r: OpenVINO turns a product with a constant into x * r + 0.
    return g.where(finite, signed, x)


def _two_product(
    g: GraphBuilder, cand: str, keep: np.floating[Any], fmt: Format
) -> tuple[str, str]:
    """``cand * keep = product + error`` exactly (Dekker), keep's split made at export
    (``keep`` here is at most 1/2, never near 1)."""
    dtype = keep.dtype
    splitter = dtype.type(2 ** ((fmt.precision + 1) // 2) + 1)
    keep_high = dtype.type(splitter * keep - (splitter * keep - keep))
    keep_low = dtype.type(keep - keep_high)
    scaled = g.mul(cand, g.scalar(splitter, dtype))
    high = g.sub(scaled, g.sub(scaled, cand))
    low = g.sub(cand, high)
    product = g.mul(cand, g.scalar(keep, dtype))
    kh, kl = g.scalar(keep_high, dtype), g.scalar(keep_low, dtype)
    error = g.sub(g.mul(high, kh), product)
    error = g.add(error, g.mul(high, kl))
    error = g.add(error, g.mul(low, kh))
    error = g.add(error, g.mul(low, kl))
    return product, error


def _two_sum(g: GraphBuilder, a: str, b: str) -> tuple[str, str]:
    """``a + b = total + tail`` exactly (Knuth's TwoSum: no order of magnitudes assumed)."""
    total = g.add(a, b)
    b_part = g.sub(total, a)
    a_part = g.sub(total, b_part)
    tail = g.add(g.sub(a, a_part), g.sub(b, b_part))
    return total, tail


def _sign_positive(g: GraphBuilder, rest: str, error: str, half_gap: str, zero: str) -> str:
    """``rest - error - half_gap > 0``, decided exactly.

    All three terms are multiples of one unit u (ulp(c) ulp(keep) / 2) below 2**(p+2) u, so
    both TwoSum tails are at most 4u and their sum is exact; the last addition then rounds a
    sum of two exact terms, which keeps its sign.
    """
    first, tail1 = _two_sum(g, rest, g.op("Neg", error))
    second, tail2 = _two_sum(g, first, g.op("Neg", half_gap))
    total = g.add(second, g.add(tail1, tail2))
    return g.op("Greater", total, zero)

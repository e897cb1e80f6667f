"""The random stream of onnxruntime's CPU Dropout kernel, computed by jump-ahead in numpy.

onnxruntime draws a Dropout mask with ``std::default_random_engine rng(seed)`` and
``std::uniform_real_distribution<float>{0, 1}``; in libstdc++ (its Linux builds) that engine is
``minstd_rand0``: ``x_k = s * a**k mod m`` with ``m = 2**31 - 1``, ``a = 16807``. Because the
k-th draw is a closed form, any draw can be computed directly, so a batch split into parts
draws exactly what the whole batch draws, and the service agrees bit for bit with an exported
graph run by onnxruntime on Linux. (Other standard libraries, such as MSVC's, use another engine.)
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Final

import numpy as np
from numpy.typing import NDArray

from service.core import fastkernel

#: minstd_rand0's modulus, the Mersenne prime 2**31 - 1.
MODULUS: Final = 2**31 - 1
#: minstd_rand0's multiplier, 7**5; a primitive root mod MODULUS, so a**(MODULUS - 1) == 1.
MULTIPLIER: Final = 16807

_ORDER: Final = MODULUS - 1  # the multiplicative order of MULTIPLIER: exponents reduce mod this
_BLOCK: Final = 1 << 16  # draws per jump-ahead block; the low-half table has this many entries
_HIGH: Final = -(-_ORDER // _BLOCK)  # entries of the high-half table (exponents < 2**31)
_MASK_CHUNK: Final = 1 << 20  # draws per chunk in keep_mask, to bound its int64 temporaries
_FEW: Final = 64  # up to this many draws are stepped one by one (same values, less overhead)
_COMPILED: Final = 1 << 16  # up to this many draws, the compiled loop when it is built

_U64: Final = 1 << 64
_SEED_MIN: Final = -(1 << 63)
_GAMMA: Final = 0x9E3779B97F4A7C15
_MIX1: Final = 0xBF58476D1CE4E5B9
_MIX2: Final = 0x94D049BB133111EB

#: The float32 divisor of libstdc++'s generate_canonical for minstd_rand0: its range
#: max - min + 1 = 2**31 - 2, which rounds to 2**31 in float32.
_RANGE: Final = np.float32(2**31)
#: Where generate_canonical clamps a result that rounded up to 1.0.
_BELOW_ONE: Final = np.nextafter(np.float32(1), np.float32(0))


@lru_cache(maxsize=1024)  # a few seeds recur (a layer's own, Monte Carlo's seed + i)
def mix_seed(seed: int) -> int:
    """Map a user seed to a minstd stream seed in ``[1, MODULUS - 1]``; the same forever.

    The seed may be any integer in ``[-(2**63), 2**64)`` (int64 or uint64); it is taken mod
    ``2**64``, then put through the SplitMix64 output function (Steele, Lea and Flood, 2014),
    all arithmetic mod ``2**64``::

        z = (seed + 0x9E3779B97F4A7C15) mod 2**64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) mod 2**64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) mod 2**64
        z = z ^ (z >> 31)
        stream_seed = z mod (2**31 - 2) + 1

    This is the first output of a SplitMix64 generator seeded with ``seed``. The hash matters:
    raw minstd seeds s and s + 1 start with draws ~8e-6 apart, so consecutive user seeds would
    drop nearly the same channels.
    """
    if not _SEED_MIN <= seed < _U64:
        raise ValueError(f"seed must be in [-(2**63), 2**64), got {seed}")
    z = (seed + _GAMMA) % _U64
    z = ((z ^ (z >> 30)) * _MIX1) % _U64
    z = ((z ^ (z >> 27)) * _MIX2) % _U64
    z ^= z >> 31
    return z % (MODULUS - 1) + 1


def engine_state(stream_seed: int) -> int:
    """The state libstdc++'s ``minstd_rand0(stream_seed)`` starts from: ``seed mod m``, 0 -> 1.

    onnxruntime passes the int64 ``seed`` attribute (plus one per run) to the engine as an
    unsigned 64-bit value; negative seeds are therefore taken mod ``2**64`` first.
    """
    if not _SEED_MIN <= stream_seed < _U64:
        raise ValueError(f"stream seed must be in [-(2**63), 2**64), got {stream_seed}")
    return (stream_seed % _U64) % MODULUS or 1


@cache
def _power_tables() -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """``a**j mod m`` for j < 2**16 and ``(a**(2**16))**j mod m`` for j < 2**15; built once."""

    def powers(base: int, count: int) -> NDArray[np.int64]:
        # Doubling: the second half of a table of powers is the first half times base**half.
        table = np.ones(count, dtype=np.int64)
        filled = 1
        while filled < count:
            step = min(filled, count - filled)
            table[filled : filled + step] = table[:step] * pow(base, filled, MODULUS) % MODULUS
            filled += step
        table.flags.writeable = False
        return table

    return powers(MULTIPLIER, _BLOCK), powers(pow(MULTIPLIER, _BLOCK, MODULUS), _HIGH)


def _powers_of_a(exponents: NDArray[np.int64]) -> NDArray[np.int64]:
    """``a**e mod m`` for exponents already reduced to ``[0, MODULUS - 1)``: two lookups."""
    low, high = _power_tables()
    powers: NDArray[np.int64] = high[exponents >> 16] * low[exponents & (_BLOCK - 1)] % MODULUS
    return powers


def minstd_draws(stream_seed: int, first: int, count: int) -> NDArray[np.int64]:
    """Draws ``first .. first + count - 1`` of ``minstd_rand0(stream_seed)``; draw 1 is the first.

    Draw k is ``x_k = s * a**k mod m`` with ``s = engine_state(stream_seed)``. Exponents
    reduce mod ``m - 1`` (a is a primitive root), so any ``first`` works. The draws are laid out
    in blocks of 2**16: each block's base ``s * a**(first + 2**16 b)`` comes from two tables
    (``a**lo`` and ``(a**(2**16))**hi`` for the low and high 16 bits of the exponent), and the
    block is that base times the ``a**lo`` table. Every product of two residues is below 2**62,
    so int64 never overflows, and there is no Python loop over draws.
    """
    if first < 1:
        raise ValueError(f"draws are numbered from 1, got first={first}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    state = engine_state(stream_seed)
    if count == 0:
        return np.empty(0, dtype=np.int64)
    if count <= _FEW:
        # A handful of draws (a small batch): plain integers beat a dozen tiny numpy calls.
        x = _draw(state, first)
        few = []
        for _ in range(count):
            few.append(x)
            x = x * MULTIPLIER % MODULUS
        return np.array(few, dtype=np.int64)
    low, _ = _power_tables()
    blocks = -(-count // _BLOCK)
    starts = (first % _ORDER + _BLOCK * np.arange(blocks, dtype=np.int64)) % _ORDER
    bases = _powers_of_a(starts) * state % MODULUS
    width = min(count, _BLOCK)
    draws = bases[:, None] * low[None, :width] % MODULUS
    return draws.reshape(-1)[:count]


def _draw(state: int, k: int) -> int:
    """Draw ``k`` of the engine that starts from ``state``: ``state * a**k mod m``."""
    return state * pow(MULTIPLIER, k % _ORDER, MODULUS) % MODULUS


def uniforms(stream_seed: int, first: int, count: int) -> NDArray[np.float32]:
    """The float32 values ``std::uniform_real_distribution<float>{0, 1}`` makes of those draws.

    libstdc++'s ``generate_canonical<float, 24>`` takes one draw:
    ``u = float32(x - 1) / float32(2**31)`` (the difference rounded to float32 first; the
    division by a power of two is exact), and returns ``nextafter(1, 0)`` if that rounded to 1.
    """
    u = (minstd_draws(stream_seed, first, count) - 1).astype(np.float32)
    u /= _RANGE
    np.minimum(u, _BELOW_ONE, out=u)
    return u


@lru_cache(maxsize=256)
def keep_threshold(rate: float) -> int:
    """The least draw value that keeps its element at ``rate``: draw x keeps iff x >= this.

    ``uniforms`` is non-decreasing in the draw, so ``u >= float32(rate)`` is a threshold on
    x, found by bisection over ``[1, MODULUS - 1]``; MODULUS when no draw keeps (the float32
    rate is 1). An ONNX graph compares integers with it and needs no float operation.
    """
    threshold = np.float32(rate)

    def keeps(x: int) -> bool:
        u = min(np.float32(x - 1) / _RANGE, _BELOW_ONE)
        return bool(u >= threshold)

    low, high = 1, MODULUS  # keeps(high) is taken as true: the answer is in [low, high]
    while low < high:
        middle = (low + high) // 2
        if keeps(middle):
            high = middle
        else:
            low = middle + 1
    return low


def keep_mask(stream_seed: int, first: int, count: int, rate: float) -> NDArray[np.bool_]:
    """Which of those draws keep their element: ``u >= float32(rate)``, as onnxruntime decides.

    Up to ``_COMPILED`` draws go through the compiled loop when it is built (the same values:
    ``keep_mask_numpy`` is the reference it is tested against).
    """
    threshold = np.float32(rate)
    if 0 < count <= _COMPILED and first >= 1:
        compiled = fastkernel.keep_mask(_draw(engine_state(stream_seed), first), count, threshold)
        if compiled is not None:
            return compiled
    return keep_mask_numpy(stream_seed, first, count, rate)


def keep_mask_numpy(stream_seed: int, first: int, count: int, rate: float) -> NDArray[np.bool_]:
    """``keep_mask`` in numpy alone, in chunks that bound its int64 temporaries."""
    threshold = np.float32(rate)
    mask = np.empty(count, dtype=np.bool_)
    for start in range(0, count, _MASK_CHUNK):
        stop = min(start + _MASK_CHUNK, count)
        np.greater_equal(
            uniforms(stream_seed, first + start, stop - start), threshold, out=mask[start:stop]
        )
    return mask

"""The minstd_rand0 stream by jump-ahead, its float32 uniforms, and the seed mixer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core import fastkernel, rng
from service.core.rng import MODULUS, MULTIPLIER

UINT64 = st.integers(min_value=0, max_value=2**64 - 1)
ANY_SEED = st.integers(min_value=-(2**63), max_value=2**64 - 1)


def sequential(state: int, first: int, count: int) -> list[int]:
    """The textbook engine: step x = a * x mod m, one draw at a time."""
    x = state
    draws = []
    for k in range(1, first + count):
        x = x * MULTIPLIER % MODULUS
        if k >= first:
            draws.append(x)
    return draws


def state_for_first_draw(x1: int) -> int:
    """The engine state whose first draw is x1."""
    return x1 * pow(MULTIPLIER, -1, MODULUS) % MODULUS


# -- minstd_draws ---------------------------------------------------------------------------


def test_the_10000th_draw_of_minstd_rand0_seeded_with_1_is_the_standards_check_value() -> None:
    # [rand.predef]: "the 10000th consecutive invocation of a default-constructed object of
    # type minstd_rand0 shall produce the value 1043618065" (default seed 1).
    assert rng.minstd_draws(1, 10000, 1).tolist() == [1043618065]
    assert rng.minstd_draws(1, 1, 10000)[-1] == 1043618065


@settings(max_examples=60, deadline=None)
@given(
    seed=UINT64,
    first=st.integers(min_value=1, max_value=2000),
    count=st.integers(min_value=0, max_value=200),
)
def test_jump_ahead_equals_stepping_the_engine(seed: int, first: int, count: int) -> None:
    got = rng.minstd_draws(seed, first, count)
    assert got.dtype == np.int64
    assert got.tolist() == sequential(rng.engine_state(seed), first, count)


def test_draws_across_many_jump_ahead_blocks_equal_stepping_the_engine() -> None:
    first, count = 65_000, 3 * 65_536 + 17  # crosses block boundaries, ends mid-block
    got = rng.minstd_draws(123_456_789, first, count)
    assert got.tolist() == sequential(123_456_789, first, count)


@settings(max_examples=60, deadline=None)
@given(seed=UINT64, first=st.integers(min_value=1, max_value=2**200))
def test_any_first_draw_by_modular_exponentiation(seed: int, first: int) -> None:
    state = rng.engine_state(seed)
    expected = [state * pow(MULTIPLIER, k, MODULUS) % MODULUS for k in range(first, first + 5)]
    assert rng.minstd_draws(seed, first, 5).tolist() == expected


def test_the_stream_has_period_m_minus_1() -> None:
    huge = 10**30 * (MODULUS - 1)
    assert rng.minstd_draws(5, huge + 7, 9).tolist() == rng.minstd_draws(5, 7, 9).tolist()
    assert rng.minstd_draws(5, MODULUS - 1, 1).tolist() == [5]  # a**(m-1) = 1


@pytest.mark.parametrize(
    ("seed", "state"),
    [(0, 1), (1, 1), (MODULUS, 1), (MODULUS + 3, 3), (-1, (2**64 - 1) % MODULUS), (2**64 - 1, 3)],
)
def test_engine_state_follows_libstdcxx_seeding(seed: int, state: int) -> None:
    # seed(s): x = s mod m, or 1 if that is 0; the int64 seed reaches it as uint64.
    assert rng.engine_state(seed) == state


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: rng.minstd_draws(1, 0, 1), "draws are numbered from 1, got first=0"),
        (lambda: rng.minstd_draws(1, 1, -1), "count must be >= 0, got -1"),
        (lambda: rng.engine_state(2**64), r"stream seed must be in \[-\(2\*\*63\), 2\*\*64\)"),
        (lambda: rng.engine_state(-(2**63) - 1), "stream seed must be in"),
    ],
)
def test_bad_arguments_are_refused(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()  # type: ignore[operator]


def test_zero_draws_is_an_empty_int64_array() -> None:
    got = rng.minstd_draws(9, 1, 0)
    assert got.shape == (0,)
    assert got.dtype == np.int64


# -- uniforms and keep_mask -----------------------------------------------------------------


BELOW_ONE = np.nextafter(np.float32(1), np.float32(0))  # 1 - 2**-24


@pytest.mark.parametrize(
    ("x1", "u"),
    [
        (1, 0.0),  # the smallest draw
        (2**30 + 1, 0.5),
        (2**25 + 3, 2**-6),  # x - 1 = 2**25 + 2, a tie in float32: to even, 2**25
        (2**25 + 7, (2**25 + 8) / 2**31),  # x - 1 = 2**25 + 6, a tie: to even, 2**25 + 8
        (2**31 - 64, BELOW_ONE),  # x - 1 = 2**31 - 65 rounds down to 2**31 - 128
        (2**31 - 63, BELOW_ONE),  # x - 1 = 2**31 - 64, a tie: to even, 2**31: clamped
        (MODULUS - 1, BELOW_ONE),  # the largest draw: rounds to 2**31, clamped
    ],
)
def test_uniform_is_the_float32_draw_over_2_to_the_31_clamped_below_one(x1: int, u: float) -> None:
    got = rng.uniforms(state_for_first_draw(x1), 1, 1)
    assert got.dtype == np.float32
    assert got[0] == np.float32(u)


def test_a_draw_exactly_at_the_rate_is_kept() -> None:
    at_half = state_for_first_draw(2**30 + 1)  # u == 0.5 exactly
    assert rng.keep_mask(at_half, 1, 1, 0.5).tolist() == [True]
    assert rng.keep_mask(at_half, 1, 1, float(np.nextafter(0.5, 1))).tolist() == [True]
    above = float(np.nextafter(np.float32(0.5), np.float32(1)))
    assert rng.keep_mask(at_half, 1, 1, above).tolist() == [False]


def test_keep_mask_compares_with_the_rate_rounded_to_float32() -> None:
    # 0.5 + 2**-30 rounds to 0.5 in float32, so u == 0.5 is still kept (float64 would drop it).
    at_half = state_for_first_draw(2**30 + 1)
    assert rng.keep_mask(at_half, 1, 1, 0.5 + 2**-30).tolist() == [True]


def test_keep_mask_over_several_chunks_equals_the_uniforms_compared_at_once() -> None:
    count = (1 << 20) * 2 + 5
    u = rng.uniforms(31337, 4, count)
    got = rng.keep_mask(31337, 4, count, 0.3)
    assert np.array_equal(got, u >= np.float32(0.3))
    assert 0.69 < got.mean() < 0.71


@pytest.mark.parametrize(("rate", "kept"), [(0.0, True), (1.0, False)])
def test_rate_0_keeps_all_and_rate_1_drops_all(rate: float, kept: bool) -> None:
    assert np.all(rng.keep_mask(77, 1, 10_000, rate) == kept)


# -- mix_seed ----------------------------------------------------------------------------------

#: These pin the documented formula (SplitMix64's first output, mod 2**31 - 2, plus 1) for
#: ever: a user's seed must drop the same channels in every release. Computed once from the
#: formula; never update them to follow a code change.
GOLDEN_MIX = [(0, 60845732), (1, 1294668924), (2, 2046307919), (2**64 - 1, 785052171)]


@pytest.mark.parametrize(("seed", "stream_seed"), [*GOLDEN_MIX, (-1, 785052171)])
def test_mix_seed_golden_values(seed: int, stream_seed: int) -> None:
    assert rng.mix_seed(seed) == stream_seed


@pytest.mark.parametrize(
    ("seed", "splitmix64"),
    # Published SplitMix64 outputs (Vigna's splitmix64.c): the first output for state 0, and
    # for state 1234567.
    [(0, 0xE220A8397B1DCDAF), (1234567, 6457827717110365317)],
)
def test_mix_seed_is_splitmix64_reduced(seed: int, splitmix64: int) -> None:
    assert rng.mix_seed(seed) == splitmix64 % (MODULUS - 1) + 1


@given(seed=ANY_SEED)
def test_mix_seed_is_a_stream_seed_and_deterministic(seed: int) -> None:
    mixed = rng.mix_seed(seed)
    assert 1 <= mixed <= MODULUS - 1
    assert rng.mix_seed(seed) == mixed
    assert rng.mix_seed(seed % 2**64) == mixed  # int64 and uint64 spellings agree


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 10**30])
def test_mix_seed_refuses_seeds_outside_64_bits(seed: int) -> None:
    with pytest.raises(ValueError, match=r"seed must be in \[-\(2\*\*63\), 2\*\*64\)"):
        rng.mix_seed(seed)


def _agreements(stream_seeds: list[int]) -> int:
    fates = [bool(rng.keep_mask(s, 1, 1, 0.5)[0]) for s in stream_seeds]
    return sum(a == b for a, b in itertools.pairwise(fates))


def test_mixing_decorrelates_consecutive_seeds() -> None:
    # The first channel's fate at rate 0.5 for user seeds s and s + 1: independent fates agree
    # in 999 * 0.5 pairs, give or take 5 sigma (sigma = sqrt(999) / 2 ~ 15.8).
    base = 10**9
    mixed = _agreements([rng.mix_seed(s) for s in range(base, base + 1000)])
    assert abs(mixed - 499.5) <= 5 * np.sqrt(999) / 2
    # Raw consecutive seeds start draws a/m ~ 8e-6 apart: their fates (nearly) always agree.
    raw = _agreements(list(range(base, base + 1000)))
    assert raw >= 990


# -- the compiled loop ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    seed=ANY_SEED,
    first=st.integers(min_value=1, max_value=2**62),
    count=st.integers(min_value=1, max_value=600),
    rate=st.floats(min_value=0.0, max_value=1.0),
)
def test_the_compiled_mask_is_the_numpy_mask(
    seed: int, first: int, count: int, rate: float
) -> None:
    stream = rng.mix_seed(seed)
    start = sequential_start(stream, first)
    compiled = fastkernel.keep_mask(start, count, np.float32(rate))
    assert compiled is not None and compiled.dtype == np.bool_
    assert np.array_equal(compiled, rng.keep_mask_numpy(stream, first, count, rate))


def sequential_start(stream_seed: int, first: int) -> int:
    """The value of draw ``first``, as the engine reaches it."""
    return int(rng.minstd_draws(stream_seed, first, 1)[0])


@pytest.mark.parametrize("x1", [1, 2, 2**30 + 1, 2**31 - 64, 2**31 - 63, MODULUS - 1])
def test_the_compiled_mask_rounds_and_clamps_as_the_reference(x1: int) -> None:
    for rate in (0.5, float(np.nextafter(np.float32(0.5), np.float32(1))), BELOW_ONE, 1.0):
        got = fastkernel.keep_mask(x1, 3, np.float32(rate))
        assert got is not None
        want = rng.keep_mask_numpy(state_for_first_draw(x1), 1, 3, rate)
        assert got.tolist() == want.tolist(), (x1, rate)


def test_small_masks_take_the_compiled_loop_and_large_ones_numpy() -> None:
    small, large = 100, (1 << 16) + 1
    assert np.array_equal(rng.keep_mask(99, 3, small, 0.4), rng.keep_mask_numpy(99, 3, small, 0.4))
    assert np.array_equal(rng.keep_mask(99, 3, large, 0.4), rng.keep_mask_numpy(99, 3, large, 0.4))


def test_the_compiled_loop_refuses_a_value_no_draw_has() -> None:
    for bad in (0, MODULUS):
        with pytest.raises(ValueError, match="first draw"):
            fastkernel.keep_mask(bad, 1, np.float32(0.5))

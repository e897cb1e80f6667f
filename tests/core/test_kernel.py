"""The dropout kernel: shapes and their errors, the values it writes, and the masks it draws."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from service.core import kernel, rng
from service.core.config import DataFormat, DropoutConfig, Kind
from service.core.kernel import apply, keep_factor, keep_mask_for, mask_matrix, mask_shape
from service.errors import (
    BatchSizeMismatch,
    InvalidShape,
    NoiseShapeMismatch,
    RankMismatch,
    UnsupportedDtype,
)
from tests.core.kernel_paths import PATHS, kernel_path
from tests.golden import GOLDEN, Golden

CL, CF = DataFormat.CHANNELS_LAST, DataFormat.CHANNELS_FIRST
BF16 = np.dtype(ml_dtypes.bfloat16)
FLOATS = [np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64), BF16]
SPATIAL = {3: Kind.SPATIAL_1D, 4: Kind.SPATIAL_2D, 5: Kind.SPATIAL_3D}
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def spatial(rank: int, rate: float = 0.5, fmt: DataFormat = CL, **kw: Any) -> DropoutConfig:
    return DropoutConfig(SPATIAL[rank], rate, fmt, **kw)


def bits(a: NDArray[Any]) -> NDArray[Any]:
    return a.view(UINT[a.dtype.itemsize])


def channels_first_view(config: DropoutConfig, a: NDArray[Any]) -> NDArray[Any]:
    """(N, C, spatial...) whatever the layer's data format."""
    return a if config.data_format is CF else np.moveaxis(a, -1, 1)


def exact_keep(rate: float, dtype: np.dtype[Any]) -> Any:
    """1 - rate (in float64) rounded to nearest-even in dtype, decided with exact rationals."""
    target = Fraction(1.0 - rate)
    guess = np.array([1.0 - rate]).astype(dtype)
    raw = int(bits(guess)[0])
    candidates = [
        np.array([r], dtype=UINT[dtype.itemsize]).view(dtype)
        for r in (raw - 1, raw, raw + 1)
        if r >= 0  # keep is in [0, 1]: one of these is the nearest
    ]

    def cost(c: NDArray[Any]) -> tuple[Fraction, int]:
        return abs(Fraction(float(c[0])) - target), int(bits(c)[0]) % 2

    return min(candidates, key=cost)[0]


def random_input(shape: tuple[int, ...], dtype: np.dtype[Any], seed: int = 0) -> NDArray[Any]:
    """Values of every magnitude the dtype holds, subnormals included, none overflowing."""
    low, high = {2: (-18, 12), 4: (-130, 124), 8: (-1030, 1020)}[dtype.itemsize]
    gen = np.random.default_rng(seed)
    x = gen.uniform(-4, 4, shape) * np.exp2(gen.integers(low, high, shape))
    return x.astype(dtype)


# -- mask shapes and their errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "shape", "expected"),
    [
        (spatial(3), (2, 5, 3), (2, 1, 3)),
        (spatial(3, fmt=CF), (2, 5, 3), (2, 5, 1)),
        (spatial(4), (2, 5, 6, 3), (2, 1, 1, 3)),
        (spatial(4, fmt=CF), (2, 5, 6, 3), (2, 5, 1, 1)),
        (spatial(5), (2, 5, 6, 7, 3), (2, 1, 1, 1, 3)),
        (spatial(5, fmt=CF), (2, 5, 6, 7, 3), (2, 5, 1, 1, 1)),
        (spatial(4), (0, 5, 6, 3), (0, 1, 1, 3)),
        (spatial(4, batch_size=2), (2, 5, 6, 3), (2, 1, 1, 3)),
        (DropoutConfig(Kind.DROPOUT, 0.5), (2, 5, 6), (2, 5, 6)),
        (DropoutConfig(Kind.DROPOUT, 0.5), (), ()),
        (DropoutConfig(Kind.DROPOUT, 0.5, noise_shape=(None, 1, 6)), (2, 5, 6), (2, 1, 6)),
        (DropoutConfig(Kind.DROPOUT, 0.5, noise_shape=(1, None, 1)), (2, 5, 6), (1, 5, 1)),
        (DropoutConfig(Kind.DROPOUT, 0.5, noise_shape=(2, 5)), (2, 5), (2, 5)),
        (DropoutConfig(Kind.DROPOUT, 0.5, noise_shape=()), (), ()),
    ],
)
def test_mask_shape(
    config: DropoutConfig, shape: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    assert mask_shape(config, shape) == expected
    assert keep_mask_for(config, shape, seed=1).shape == expected


@pytest.mark.parametrize(
    ("config", "shape", "message"),
    [
        (
            spatial(4, name="spatial_dropout2d"),
            (2, 3, 4),
            'Input 0 of layer "spatial_dropout2d" is incompatible with the layer: '
            "expected ndim=4, found ndim=3. Full shape received: (2, 3, 4)",
        ),
        (
            spatial(3, name="sd1"),
            (5,),
            'Input 0 of layer "sd1" is incompatible with the layer: '
            "expected ndim=3, found ndim=1. Full shape received: (5,)",
        ),
        (
            spatial(5, name="sd3"),
            (1, 2, 3, 4, 5, 6),
            'Input 0 of layer "sd3" is incompatible with the layer: '
            "expected ndim=5, found ndim=6. Full shape received: (1, 2, 3, 4, 5, 6)",
        ),
    ],
)
def test_spatial_kinds_refuse_other_ranks_in_keras_words(
    config: DropoutConfig, shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(RankMismatch) as caught:
        mask_shape(config, shape)
    assert caught.value.detail == message
    assert caught.value.code == "rank_mismatch"


def test_batch_size_must_match_the_first_dimension() -> None:
    config = spatial(4, name="sd", batch_size=8)
    with pytest.raises(BatchSizeMismatch) as caught:
        apply(config, np.zeros((4, 2, 2, 3), np.float32), training=False, seed=0)
    assert caught.value.detail == (
        'Layer "sd" was built with batch_size=8, but the input\'s first dimension is 4.'
    )


def test_a_scalar_has_no_batch_dimension_for_batch_size() -> None:
    config = DropoutConfig(Kind.DROPOUT, 0.5, batch_size=1, name="d")
    with pytest.raises(InvalidShape, match="batch_size=1, but the input is a scalar"):
        mask_shape(config, ())


@pytest.mark.parametrize(
    ("noise_shape", "shape", "message"),
    [
        (
            (None, 1),
            (2, 5, 6),
            'Layer "d" has noise_shape=(None, 1) with 2 dimension(s), '
            "but its input has 3: shape (2, 5, 6).",
        ),
        (
            (None, 3, 1),
            (2, 5, 6),
            'Layer "d" has noise_shape=(None, 3, 1), which does not broadcast to the input shape '
            "(2, 5, 6): dimension 1 is 3, but must be 1, None or 5.",
        ),
        (
            (0,),
            (4,),
            'Layer "d" has noise_shape=(0,), which does not broadcast to the input shape (4,): '
            "dimension 0 is 0, but must be 1, None or 4.",
        ),
    ],
)
def test_noise_shape_must_broadcast_to_the_input(
    noise_shape: tuple[int | None, ...], shape: tuple[int, ...], message: str
) -> None:
    config = DropoutConfig(Kind.DROPOUT, 0.5, noise_shape=noise_shape, name="d")
    with pytest.raises(NoiseShapeMismatch) as caught:
        apply(config, np.zeros(shape, np.float32), training=True, seed=0)
    assert caught.value.detail == message
    assert caught.value.code == "invalid_noise_shape"


def test_shapes_are_checked_in_inference_mode_too() -> None:
    with pytest.raises(RankMismatch):
        apply(spatial(4), np.zeros((2, 3, 4), np.float32), training=False, seed=0)


# -- dtypes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_the_output_keeps_the_input_dtype(dtype: np.dtype[Any], training: bool) -> None:
    x = random_input((2, 3, 4, 5), dtype)
    result = apply(spatial(4), x, training=training, seed=3)
    assert result.output.dtype == dtype
    assert result.output.shape == x.shape


@pytest.mark.parametrize(
    "dtype",
    [
        np.int32,
        np.int64,
        np.uint8,
        np.bool_,
        np.complex64,
        np.complex128,
        object,
        ">f4",  # float32, but not in native byte order
        ">f8",
    ],
    ids=str,
)
@pytest.mark.parametrize("training", [True, False])
def test_other_dtypes_are_refused(dtype: Any, training: bool) -> None:
    x = np.zeros((2, 3, 4, 5), dtype=dtype)
    with pytest.raises(UnsupportedDtype) as caught:
        apply(spatial(4), x, training=training, seed=0)
    assert caught.value.code == "unsupported_dtype"
    assert caught.value.detail == (
        f"Unsupported dtype {str(x.dtype)!r}: dropout takes float16, float32, float64 or bfloat16."
    )


# -- values ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("fmt", [CL, CF])
def test_each_feature_map_is_all_zero_or_all_scaled(rank: int, fmt: DataFormat) -> None:
    config = spatial(rank, 0.4, fmt)
    shape = (6, 3, 4, 5, 7)[:rank]
    x = random_input(shape, np.dtype(np.float32)) + np.float32(1000)  # no zeros in x
    result = apply(config, x, training=True, seed=11)
    scaled = channels_first_view(config, x / np.float32(0.6))
    out = channels_first_view(config, result.output)
    kept = mask_matrix(config, result.mask)
    for i, c in np.ndindex(kept.shape):
        if kept[i, c]:
            assert np.array_equal(out[i, c], scaled[i, c])
        else:
            assert not np.any(bits(np.ascontiguousarray(out[i, c])))  # +0.0 everywhere
    assert 0 < kept.sum() < kept.size


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("rate", [0.1, 0.3, 1 / 3, 0.5, 0.77, 0.9, 0.999])
def test_kept_values_are_the_correctly_rounded_quotient(
    dtype: np.dtype[Any], rate: float, path: str
) -> None:
    config = DropoutConfig(Kind.DROPOUT, rate)
    x = random_input((4000,), dtype, seed=int(rate * 1000))
    with kernel_path(path):
        result = apply(config, x, training=True, seed=5)
    keep = exact_keep(rate, dtype)
    # Independent reference: divide in float64, round once to the dtype. For one division of
    # p-bit numbers, rounding first to 53 >= 2p + 2 bits cannot change the final rounding
    # (Figueroa 1995), for every p here (11, 24, and 8 through float32's 24).
    with np.errstate(over="ignore"):
        expected = (x.astype(np.float64) / float(keep)).astype(dtype)
    kept = result.mask
    assert np.array_equal(bits(result.output[kept]), bits(expected[kept]))
    assert not np.any(bits(result.output[~kept]))
    if dtype == np.float32 and rate in (0.1, 0.3, 0.77):
        # The reference can tell the formulas apart: multiplying by the rounded reciprocal, or
        # dividing by 1 - rate unrounded, differ from x / keep somewhere.
        reciprocal = x * (np.float32(1) / keep)
        unrounded = (x.astype(np.float64) / (1.0 - rate)).astype(np.float32)
        assert np.any(bits(reciprocal[kept]) != bits(expected[kept]))
        assert np.any(bits(unrounded[kept]) != bits(expected[kept]))


@pytest.mark.parametrize("dtype", [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)], ids=str)
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.77])
def test_large_two_byte_tensors_divide_every_bit_pattern_correctly(
    dtype: np.dtype[Any], rate: float
) -> None:
    # 2**16 elements take the lookup-table path; every possible value appears once.
    x = np.arange(1 << 16, dtype=np.uint16).view(dtype).reshape(1, 1 << 16)
    result = apply(DropoutConfig(Kind.DROPOUT, rate), x, training=True, seed=3)
    keep = exact_keep(rate, dtype)
    with np.errstate(all="ignore"):
        expected = (x.astype(np.float64) / float(keep)).astype(dtype)
    kept = result.mask & ~np.isnan(x.astype(np.float32))
    assert np.array_equal(bits(result.output[kept]), bits(expected[kept]))
    assert np.isnan(
        result.output[result.mask & np.isnan(x.astype(np.float32))].astype(np.float32)
    ).all()
    assert not np.any(bits(result.output[~result.mask]))


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(min_value=0, max_value=1), which=st.sampled_from(FLOATS))
def test_keep_factor_is_one_minus_rate_correctly_rounded(rate: float, which: np.dtype[Any]) -> None:
    got = keep_factor(rate, which)
    assert got.dtype == which
    assert bits(np.array([got]))[0] == bits(np.array([exact_keep(rate, which)]))[0]


def test_keep_factor_rounds_bfloat16_once() -> None:
    # 1 - rate = 0.5 + 2**-9 + 2**-40: just above the midpoint of 0.5 and 0.5 + 2**-8. Through
    # float32 it becomes the midpoint and rounds to even (0.5); rounded once it is 0.50390625.
    rate = 0.5 - 2**-9 - 2**-40
    assert float(np.array([1.0 - rate]).astype(BF16)[0]) == 0.5  # what a plain cast gives
    assert float(keep_factor(rate, BF16)) == 0.5 + 2**-8


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_dropped_maps_are_positive_zero_whatever_x_holds(dtype: np.dtype[Any]) -> None:
    config = spatial(4, 0.5, CF)
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, -1.5, 2.0]).astype(dtype)
    x = np.broadcast_to(specials, (8, 6, 2, 8)).copy()
    result = apply(config, x, training=True, seed=9)
    kept = mask_matrix(config, result.mask)
    assert 0 < kept.sum() < kept.size
    out = result.output
    assert not np.any(bits(out[~kept]))  # +0.0: no sign bit, no NaN
    in_kept = out[kept]  # (maps, 2, 8)
    keep = float(keep_factor(0.5, dtype))
    assert np.all(np.isnan(in_kept[..., :2].astype(np.float64)))
    assert np.array_equal(
        in_kept[..., 2:5].astype(np.float64),
        np.broadcast_to([np.inf, -np.inf, -0.0], in_kept[..., 2:5].shape),
    )
    assert np.all(np.signbit(in_kept[..., 4].astype(np.float64)))  # -0.0 / keep is -0.0
    assert np.all(in_kept[..., 6:].astype(np.float64) == np.array([-1.5, 2.0]) / keep)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize(("rate", "training"), [(0.5, False), (0.0, True), (0.0, False)])
def test_inference_and_rate_0_return_the_input_itself(
    dtype: np.dtype[Any], rate: float, training: bool
) -> None:
    x = random_input((3, 4, 5, 2), dtype)
    payload = {2: 0x7E2B, 4: 0x7FC12345, 8: 0x7FF8DEADBEEF0001}[dtype.itemsize]
    bits(x)[0, 0, 0, 0] = payload  # a quiet NaN with a payload
    before = x.copy()
    out = np.full_like(x, 7)
    result = apply(spatial(4, rate), x, training=training, seed=1, out=out)
    assert result.output is x
    assert np.array_equal(bits(x), bits(before))
    assert result.mask.shape == (3, 1, 1, 2)
    assert result.mask.all()
    assert np.all(out == 7)  # out is left alone: the output is x itself


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_rate_1_gives_positive_zeros(dtype: np.dtype[Any]) -> None:
    x = random_input((2, 3, 4, 5), dtype)
    x[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    result = apply(spatial(4, 1.0), x, training=True, seed=4)
    assert not np.any(bits(result.output))
    assert not result.mask.any()


def test_float16_overflows_to_inf_without_a_warning() -> None:
    x = np.full((1, 1, 1, 4), 60000, np.float16)
    result = apply(spatial(4, 0.5), x, training=True, seed=0)
    assert set(result.output.reshape(-1).tolist()) <= {0.0, np.inf}


# -- out= -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_out_receives_the_output_and_may_be_the_input(dtype: np.dtype[Any]) -> None:
    config = spatial(4, 0.3)
    x = random_input((4, 3, 3, 6), dtype)
    expected = apply(config, x, training=True, seed=8).output
    out = np.empty_like(x)
    result = apply(config, x, training=True, seed=8, out=out)
    assert result.output is out
    assert np.array_equal(bits(out), bits(expected))
    result = apply(config, x, training=True, seed=8, out=x)
    assert result.output is x
    assert np.array_equal(bits(x), bits(expected))


def test_out_may_be_a_strided_view() -> None:
    config = spatial(4, 0.3, CF)
    x = random_input((4, 3, 3, 6), np.dtype(np.float32))
    expected = apply(config, x, training=True, seed=8).output
    backing = np.empty((4, 3, 3, 12), np.float32)
    out = backing[..., ::2]
    apply(config, x, training=True, seed=8, out=out)
    assert np.array_equal(out, expected)


@pytest.mark.parametrize(
    "out",
    [np.empty((2, 3, 4, 4), np.float32), np.empty((2, 3, 4, 5), np.float64)],
    ids=["shape", "dtype"],
)
def test_out_must_match_the_input(out: NDArray[Any]) -> None:
    with pytest.raises(ValueError, match="out must be a writable float32 array"):
        apply(spatial(4), np.zeros((2, 3, 4, 5), np.float32), training=True, seed=0, out=out)


def test_out_must_be_writable() -> None:
    out = np.empty((2, 3, 4, 5), np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writable=False"):
        apply(spatial(4), np.zeros((2, 3, 4, 5), np.float32), training=True, seed=0, out=out)


def test_the_returned_mask_is_read_only() -> None:
    result = apply(spatial(4), np.ones((2, 3, 4, 5), np.float32), training=True, seed=0)
    with pytest.raises(ValueError, match="read-only"):
        result.mask[0, 0, 0, 0] = True


# -- masks: statistics, offsets, formats, goldens -------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_the_drop_fraction_is_binomial(rate: float) -> None:
    n, c = 400, 250
    kept = mask_matrix(spatial(4, rate), keep_mask_for(spatial(4, rate), (n, 2, 2, c), seed=99))
    cells = n * c
    sigma = math.sqrt(cells * rate * (1 - rate))
    assert abs((~kept).sum() - cells * rate) <= 5 * sigma
    # and no channel or sample is favoured: per-channel drop counts over 400 samples
    per_channel = (~kept).sum(axis=0)
    assert abs(per_channel.mean() - n * rate) <= 5 * math.sqrt(n * rate * (1 - rate) / c)


CONFIGS = [
    spatial(3, 0.5),
    spatial(4, 0.3, CF),
    spatial(5, 0.7),
    DropoutConfig(Kind.DROPOUT, 0.4),
    DropoutConfig(Kind.DROPOUT, 0.4, noise_shape=(None, 1, None)),
    DropoutConfig(Kind.DROPOUT, 0.4, noise_shape=(1, None, None)),
]


@settings(max_examples=60, deadline=None)
@given(
    which=st.sampled_from(range(len(CONFIGS))),
    n=st.integers(min_value=1, max_value=12),
    cuts=st.lists(st.integers(min_value=0, max_value=12), max_size=3),
    seed=st.integers(min_value=-(2**63), max_value=2**64 - 1),
    offset=st.integers(min_value=0, max_value=2**40),
)
def test_a_batch_in_parts_at_their_offsets_equals_the_whole(
    which: int, n: int, cuts: list[int], seed: int, offset: int
) -> None:
    config = CONFIGS[which]
    rank = config.kind.rank or 3
    x = random_input((n, 3, 2, 4, 5)[:rank], np.dtype(np.float32))
    whole = apply(config, x, training=True, seed=seed, sample_offset=offset).output
    bounds = sorted({0, n, *(min(c, n) for c in cuts)})
    parts = [
        apply(config, x[a:b], training=True, seed=seed, sample_offset=offset + a).output
        for a, b in itertools.pairwise(bounds)
    ]
    assert np.array_equal(bits(np.concatenate(parts)), bits(whole))


@pytest.mark.parametrize(("fmt", "shape"), [(CL, (5, 2, 3, 7)), (CF, (5, 7, 2, 3))])
def test_sample_i_channel_c_takes_draw_offset_plus_i_times_c_plus_c_plus_1(
    fmt: DataFormat, shape: tuple[int, ...]
) -> None:
    n, c, offset, seed = 5, 7, 1000, 2024
    stream = rng.mix_seed(seed)
    config = spatial(4, 0.5, fmt)
    got = mask_matrix(config, keep_mask_for(config, shape, seed, offset))
    draws = [(offset + i) * c + ch + 1 for i in range(n) for ch in range(c)]
    expected = [bool(rng.keep_mask(stream, k, 1, 0.5)[0]) for k in draws]
    assert got.reshape(-1).tolist() == expected


def test_channels_first_and_last_drop_the_same_sample_channel_pairs() -> None:
    first = keep_mask_for(spatial(5, 0.5, CF), (4, 9, 2, 3, 2), seed=31, sample_offset=6)
    last = keep_mask_for(spatial(5, 0.5, CL), (4, 2, 3, 2, 9), seed=31, sample_offset=6)
    assert first.shape == (4, 9, 1, 1, 1)
    assert last.shape == (4, 1, 1, 1, 9)
    assert np.array_equal(
        mask_matrix(spatial(5, 0.5, CF), first), mask_matrix(spatial(5, 0.5, CL), last)
    )


def test_a_fixed_first_noise_axis_ignores_the_offset() -> None:
    config = DropoutConfig(Kind.DROPOUT, 0.5, noise_shape=(1, None))
    a = keep_mask_for(config, (3, 40), seed=1, sample_offset=0)
    b = keep_mask_for(config, (3, 40), seed=1, sample_offset=17)
    assert np.array_equal(a, b)
    free = DropoutConfig(Kind.DROPOUT, 0.5)
    assert not np.array_equal(
        keep_mask_for(free, (1, 40), 1, 0), keep_mask_for(free, (1, 40), 1, 1)
    )


def test_seeds_and_offsets_are_validated() -> None:
    with pytest.raises(ValueError, match="sample_offset must be >= 0, got -1"):
        keep_mask_for(spatial(4), (1, 2, 2, 3), seed=0, sample_offset=-1)
    with pytest.raises(ValueError, match="seed must be in"):
        keep_mask_for(spatial(4), (1, 2, 2, 3), seed=2**64)


def test_mask_matrix_is_samples_by_channels_or_the_mask_itself() -> None:
    mask = keep_mask_for(spatial(3, 0.5, CF), (4, 6, 9), seed=3)
    assert mask_matrix(spatial(3, 0.5, CF), mask).shape == (4, 6)
    config = DropoutConfig(Kind.DROPOUT, 0.5, noise_shape=(None, 1, None))
    mask = keep_mask_for(config, (4, 6, 9), seed=3)
    assert mask_matrix(config, mask) is mask


@pytest.mark.parametrize("golden", GOLDEN)
def test_golden_masks(golden: Golden) -> None:
    drawn = keep_mask_for(golden.config, golden.shape, golden.seed, golden.offset)
    mask = mask_matrix(golden.config, drawn)
    if golden.config.kind is Kind.DROPOUT:
        mask = mask.reshape(-1)
    assert mask.astype(int).tolist() == golden.mask
    assert kernel.mask_shape(golden.config, golden.shape) == drawn.shape


@pytest.mark.parametrize(
    ("shape", "fmt", "rate"),
    [
        ((3, 300, 300, 3), DataFormat.CHANNELS_LAST, 0.5),  # long rows, blocks with a remainder
        ((6, 130, 130, 2), DataFormat.CHANNELS_LAST, 0.5),  # rows all kept / all dropped too
        ((2, 5, 260, 260), DataFormat.CHANNELS_FIRST, 0.4),  # maps over a block: runs of maps
        ((40, 3, 30, 30), DataFormat.CHANNELS_FIRST, 0.6),  # small maps: several per block
        ((50, 20, 20, 7), DataFormat.CHANNELS_LAST, 0.3),  # short rows
    ],
)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("path", PATHS)
def test_blocked_paths_equal_the_plain_formula(
    shape: tuple[int, ...], fmt: DataFormat, rate: float, dtype: np.dtype[Any], path: str
) -> None:
    # The fast paths work block by block (numpy) or in one compiled pass; this reference is
    # the textbook whole-array formula.
    config = DropoutConfig(Kind.SPATIAL_2D, rate, fmt)
    x = random_input(shape, dtype, seed=len(shape) + shape[0])
    mask = keep_mask_for(config, x.shape, seed=9)
    keep = exact_keep(rate, dtype)
    with np.errstate(all="ignore"):
        quotient = (x.astype(np.float64) / float(keep)).astype(dtype)
    expected = np.where(np.broadcast_to(mask, x.shape), quotient, np.zeros((), dtype))
    nan_kept = np.isnan(x.astype(np.float64)) & np.broadcast_to(mask, x.shape)
    in_place = x.copy()
    for source, out in ((x, None), (x, np.empty_like(x)), (in_place, in_place)):
        with kernel_path(path):
            result = apply(config, source, training=True, seed=9, out=out)
        assert np.all((bits(result.output) == bits(expected)) | nan_kept)

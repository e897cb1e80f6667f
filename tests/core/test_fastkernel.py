"""The compiled kernel against the numpy kernel, bit for bit, and the half-float quotient
against exact arithmetic: every dtype, layout, output mode, odd sizes and special values."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from service.core import fastkernel, kernel
from service.core.config import DataFormat, DropoutConfig, Kind
from service.core.kernel import apply, keep_factor
from tests.core.kernel_paths import PATHS, kernel_path

CL, CF = DataFormat.CHANNELS_LAST, DataFormat.CHANNELS_FIRST
F16, BF16 = np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)
FLOATS = [F16, BF16, np.dtype(np.float32), np.dtype(np.float64)]
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
SPATIAL = {3: Kind.SPATIAL_1D, 4: Kind.SPATIAL_2D, 5: Kind.SPATIAL_3D}
#: Rates whose keep factors differ in every low bit, one whose keep is a float16 subnormal
#: (2**-20) and one whose quotients mostly overflow.
RATES = [0.1, 0.3, 1 / 3, 0.5, 0.77, 0.999, 1 - 2**-20]


def bits(a: NDArray[Any]) -> NDArray[Any]:
    return a.view(UINT[a.dtype.itemsize])


def wide(a: NDArray[Any]) -> NDArray[np.float64]:
    with np.errstate(invalid="ignore"):  # ml_dtypes warns when it casts a bfloat16 NaN
        return a.astype(np.float64)


def every_value(dtype: np.dtype[Any]) -> NDArray[Any]:
    return np.arange(1 << 16, dtype=np.uint16).view(dtype)


def with_specials(shape: tuple[int, ...], dtype: np.dtype[Any], seed: int) -> NDArray[Any]:
    """Values of every magnitude, subnormals, +-0, +-inf and NaNs with payloads and signs."""
    gen = np.random.default_rng(seed)
    low, high = {2: (-26, 17), 4: (-150, 129), 8: (-1075, 1025)}[dtype.itemsize]
    with np.errstate(over="ignore"):
        x = (gen.uniform(-2, 2, shape) * np.exp2(gen.integers(low, high, shape))).astype(dtype)
    flat = bits(x.reshape(-1))
    picks = gen.integers(0, flat.size, size=min(flat.size, 12))
    nan = {2: [0x7E01, 0xFC02, 0x7D00], 4: [0x7FC00001, 0xFF812345], 8: [0xFFF0000000000001]}
    if dtype == BF16:
        nan[2] = [0x7FC1, 0xFF81, 0x7F81]
    specials = (
        np.array([*nan[dtype.itemsize]], dtype=UINT[dtype.itemsize]).tolist()
        + bits(np.array([0.0, -0.0, np.inf, -np.inf]).astype(dtype)).tolist()
    )
    for i, p in enumerate(picks):
        flat[p] = specials[i % len(specials)]
    return x


def reference(config: DropoutConfig, x: NDArray[Any], seed: int) -> NDArray[Any]:
    with kernel_path("numpy"):
        return apply(config, x, training=True, seed=seed).output


def outputs(config: DropoutConfig, x: NDArray[Any], seed: int) -> list[NDArray[Any]]:
    """The output written to a new array, to ``out=``, and in place."""
    new = apply(config, x, training=True, seed=seed).output
    out = np.full_like(x, 3)
    assert apply(config, x, training=True, seed=seed, out=out).output is out
    in_place = x.copy()
    assert apply(config, in_place, training=True, seed=seed, out=in_place).output is in_place
    return [new, out, in_place]


# -- the quotient of every half-precision value ---------------------------------------------


def assert_correctly_rounded(x: NDArray[Any], keep: np.generic, got: NDArray[Any]) -> None:
    """got == x / keep rounded to nearest-even in x's dtype, decided by exact arithmetic.

    With r = |got|, its neighbours r- and r+, every product and difference below is exact in
    float64 (at most 22 significant bits): |x| - r * keep must lie within half of each gap
    times keep, a tie must land on an even significand, and inf needs |x| / keep at or past
    the midpoint between the largest finite value and the next power of two.
    """
    dtype = x.dtype
    finite_max, inf = (0x7BFF, 0x7C00) if dtype == F16 else (0x7F7F, 0x7F80)
    beyond = 2.0**16 if dtype == F16 else 2.0**128  # where the value after the largest would be
    k = float(keep)
    xs, gs = wide(x), wide(got)
    nan = np.isnan(xs)
    assert np.isnan(gs[nan]).all()
    a, r = np.abs(xs[~nan]), np.abs(gs[~nan])
    assert not np.isnan(r).any()
    assert np.array_equal(np.signbit(gs[~nan]), np.signbit(xs[~nan]))
    mag = bits(got)[~nan].astype(np.int64) & 0x7FFF

    def value(m: NDArray[np.int64]) -> NDArray[np.float64]:
        return wide(m.astype(np.uint16).view(dtype))

    largest = float(value(np.array([finite_max]))[0])
    overflowed = mag == inf
    assert (a[overflowed] >= (largest + beyond) / 2 * k).all()
    fin = ~overflowed
    a, r, mag = a[fin], r[fin], mag[fin]
    up = np.where(mag < finite_max, value(np.minimum(mag + 1, finite_max)), beyond)
    down = np.where(mag > 0, value(np.maximum(mag - 1, 0)), -value(np.array([1]))[0])
    err = a - r * k
    above, below = (up - r) * k / 2, (r - down) * k / 2
    assert (err <= above).all(), np.flatnonzero(err > above)[:5]
    assert (-err <= below).all(), np.flatnonzero(-err > below)[:5]
    tie = (err == above) | (-err == below)
    assert (mag[tie] % 2 == 0).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
def test_every_half_value_divides_to_the_correctly_rounded_quotient(
    path: str, rate: float, dtype: np.dtype[Any]
) -> None:
    x = every_value(dtype)
    keep = keep_factor(rate, dtype)
    with np.errstate(all="ignore"):
        # numpy's own float16 loop and ml_dtypes' bfloat16 loop: the library division.
        library = np.divide(x, dtype.type(keep), dtype=dtype)
    with kernel_path("numpy"):
        expected = np.empty_like(x)
        with np.errstate(all="ignore"):
            kernel._divide(x, keep, expected)
    got = np.empty_like(x)
    with kernel_path(path), np.errstate(all="ignore"):
        kernel._divide(x, keep, got)
    assert_correctly_rounded(x, keep, got)
    nan = np.isnan(wide(x))
    assert np.array_equal(bits(got)[~nan], bits(library)[~nan])
    assert np.isnan(wide(library[nan])).all()
    assert np.array_equal(bits(got), bits(expected))  # NaN payloads too


@pytest.mark.parametrize("path", PATHS[1:])
@pytest.mark.parametrize("fmt", [CL, CF], ids=str)
@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
def test_every_half_value_through_the_masked_loops(
    path: str, fmt: DataFormat, dtype: np.dtype[Any]
) -> None:
    # The same values through apply, where rows are part kept (channels_last: 13 channels,
    # a width the vector loops do not divide) or whole maps kept and dropped.
    config = DropoutConfig(Kind.SPATIAL_2D, 0.3, fmt)
    values = np.concatenate([every_value(dtype)] * 13)
    x = values.reshape((4, 128, 128, 13) if fmt is CL else (4, 13, 128, 128))
    expected = reference(config, x, seed=5)
    with kernel_path(path):
        for got in outputs(config, x, seed=5):
            assert np.array_equal(bits(got), bits(expected))


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
def test_the_exact_check_catches_a_misrounding(dtype: np.dtype[Any]) -> None:
    # The check above is the independent judge: truncating, or being one unit off, fails it.
    x = every_value(dtype)
    keep = keep_factor(0.3, dtype)
    with np.errstate(all="ignore"):
        right = (wide(x) / float(keep)).astype(dtype)
        truncated = (
            (bits((x.astype(np.float32) / np.float32(keep)).reshape(-1)) >> 16).astype(np.uint16)
            if dtype == BF16
            else None
        )
    assert_correctly_rounded(x, keep, right)
    off = bits(right).copy()
    finite = np.isfinite(wide(right)) & (wide(right) != 0)
    off[np.flatnonzero(finite)[1234]] += 1
    with pytest.raises(AssertionError):
        assert_correctly_rounded(x, keep, off.view(dtype))
    if truncated is not None:
        with pytest.raises(AssertionError):
            assert_correctly_rounded(x, keep, truncated.view(dtype))


# -- every layout and output mode, against the numpy kernel ---------------------------------

LAYERS = [
    *(DropoutConfig(SPATIAL[rank], 0.4, fmt) for rank in (3, 4, 5) for fmt in (CL, CF)),
    DropoutConfig(Kind.DROPOUT, 0.4),
    DropoutConfig(Kind.DROPOUT, 0.4, noise_shape=(None, 1, None)),
    DropoutConfig(Kind.DROPOUT, 0.4, noise_shape=(None, None, 1)),
    DropoutConfig(Kind.DROPOUT, 0.4, noise_shape=(1, None, 1)),  # not one broadcast block
    DropoutConfig(Kind.DROPOUT, 0.4, noise_shape=(1, 1, None)),
]


def layer_id(value: object) -> str | None:
    if not isinstance(value, DropoutConfig):
        return None  # pytest's own id
    return f"{value.kind.value}-{value.data_format.value}-{value.noise_shape}"


@settings(max_examples=150, deadline=None)
@given(
    which=st.sampled_from(range(len(LAYERS))),
    dims=st.lists(st.integers(min_value=1, max_value=23), min_size=5, max_size=5),
    wide=st.sampled_from([None, 255, 256, 257, 300]),
    dtype=st.sampled_from(FLOATS),
    rate=st.sampled_from([0.1, 0.5, 0.9, 1.0, 1 / 3]),
    seed=st.integers(min_value=0, max_value=2**64 - 1),
    path=st.sampled_from(PATHS[1:]),
)
def test_odd_shapes_equal_the_numpy_kernel_in_every_output_mode(
    which: int,
    dims: list[int],
    wide: int | None,
    dtype: np.dtype[Any],
    rate: float,
    seed: int,
    path: str,
) -> None:
    base = LAYERS[which]
    config = DropoutConfig(base.kind, rate, base.data_format, noise_shape=base.noise_shape)
    rank = base.kind.rank or 3
    shape = dims[:rank]
    if wide is not None:  # a channel count around the C kernel's tiling period
        shape[-1 if base.data_format is CL else 1] = wide
    x = with_specials(tuple(shape), dtype, seed % 1000)
    expected = reference(config, x, seed)
    with kernel_path(path):
        for got in outputs(config, x, seed):
            assert np.array_equal(bits(got), bits(expected))


@pytest.mark.parametrize("path", PATHS[1:])
@pytest.mark.parametrize(
    ("config", "shape"),
    [
        (DropoutConfig(Kind.SPATIAL_2D, 0.5, CL), (3, 150, 151, 3)),  # long rows, few channels
        (DropoutConfig(Kind.SPATIAL_2D, 0.5, CL), (6, 64, 65, 2)),  # rows all kept or dropped
        (DropoutConfig(Kind.SPATIAL_2D, 0.4, CF), (2, 5, 260, 261)),  # large maps
        (DropoutConfig(Kind.SPATIAL_2D, 0.6, CF), (40, 3, 30, 31)),  # small maps
        (DropoutConfig(Kind.SPATIAL_2D, 0.3, CL), (50, 20, 20, 7)),  # short rows
        (DropoutConfig(Kind.SPATIAL_1D, 0.3, CL), (4, 3001, 33)),
        (DropoutConfig(Kind.SPATIAL_3D, 0.3, CF), (3, 9, 17, 16, 15)),
        (DropoutConfig(Kind.DROPOUT, 0.3), (301, 1003)),
        (DropoutConfig(Kind.DROPOUT, 0.3, noise_shape=(None, 1, None)), (40, 71, 129)),
        (DropoutConfig(Kind.DROPOUT, 0.3, noise_shape=(1, None, 1)), (30, 171, 39)),
    ],
    ids=layer_id,
)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_large_tensors_equal_the_numpy_kernel_in_every_output_mode(
    path: str, config: DropoutConfig, shape: tuple[int, ...], dtype: np.dtype[Any]
) -> None:
    # Past the numpy kernel's 256 KiB blocks, so its blocked paths are the reference.
    x = with_specials(shape, dtype, seed=len(shape))
    expected = reference(config, x, seed=11)
    with kernel_path(path):
        for got in outputs(config, x, seed=11):
            assert np.array_equal(bits(got), bits(expected))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_strided_and_empty_tensors_take_the_numpy_kernel(path: str, dtype: np.dtype[Any]) -> None:
    config = DropoutConfig(Kind.SPATIAL_2D, 0.5, CF)
    x = with_specials((4, 6, 5, 9), dtype, seed=2)
    expected = reference(config, x, seed=3)
    backing = np.zeros((4, 6, 5, 18), dtype)
    with kernel_path(path):
        apply(config, x[..., ::-1][..., ::-1], training=True, seed=3, out=backing[..., ::2])
        empty = apply(config, np.zeros((0, 6, 5, 9), dtype), training=True, seed=3).output
    assert np.array_equal(bits(np.ascontiguousarray(backing[..., ::2])), bits(expected))
    assert empty.shape == (0, 6, 5, 9)


# -- the compiled pass is the one that runs -------------------------------------------------


def test_the_extension_is_built() -> None:
    assert fastkernel.available()


@pytest.mark.parametrize(
    ("config", "shape", "masked"),
    [
        (DropoutConfig(Kind.SPATIAL_2D, 0.5, CL), (2, 3, 4, 5), True),
        (DropoutConfig(Kind.SPATIAL_3D, 0.5, CF), (2, 3, 4, 5, 6), True),
        (DropoutConfig(Kind.DROPOUT, 0.5), (7,), True),
        (DropoutConfig(Kind.DROPOUT, 0.5, noise_shape=(1, None, 1)), (3, 4, 5), False),
    ],
    ids=layer_id,
)
def test_apply_runs_the_compiled_pass(
    config: DropoutConfig,
    shape: tuple[int, ...],
    masked: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    native = fastkernel._native
    assert native is not None
    calls: list[bool] = []

    def spy(*args: Any) -> None:
        calls.append(args[3] is not None)
        native.divide_rows(*args)

    spying = {"divide_rows": staticmethod(spy), "keep_mask": staticmethod(native.keep_mask)}
    monkeypatch.setattr(fastkernel, "_native", type("Spy", (), spying))
    apply(config, np.ones(shape, np.float32), training=True, seed=1)
    # One pass with the mask, or (a mask of no block form) a division that numpy then masks.
    assert calls == [masked]


@pytest.mark.parametrize(
    ("shape", "mask_shape", "expected"),
    [
        ((2, 5, 6, 3), (2, 1, 1, 3), (2, 3)),
        ((2, 3, 5, 6), (2, 3, 1, 1), (6, 1)),
        ((4, 7), (4, 7), (1, 28)),
        ((4, 1, 7), (4, 1, 7), (1, 28)),
        ((4, 5, 7), (1, 5, 7), (1, 35)),
        ((4, 5, 7), (4, 5, 1), (20, 1)),
        ((4, 5, 7), (1, 1, 1), (1, 1)),
        ((1, 5, 1, 7), (1, 1, 1, 7), (1, 7)),
        ((4, 5, 7), (1, 5, 1), None),
        ((4, 5, 6, 7), (4, 1, 6, 1), None),
        ((), (), (1, 1)),
    ],
)
def test_rows_and_width(
    shape: tuple[int, ...], mask_shape: tuple[int, ...], expected: tuple[int, int] | None
) -> None:
    assert fastkernel.rows_and_width(shape, mask_shape) == expected


def test_the_extension_checks_its_arguments() -> None:
    native = fastkernel._native
    assert native is not None
    x = np.zeros(12, np.float32).view(np.uint32)
    with pytest.raises(ValueError, match="same whole number"):
        native.divide_rows(2, x, np.zeros(11, np.uint32), None, 1, 1, 0.5, None, True)
    with pytest.raises(ValueError, match="rows \\* width must divide"):
        native.divide_rows(2, x, x, None, 5, 1, 0.5, None, True)
    with pytest.raises(ValueError, match="flags must hold"):
        native.divide_rows(2, x, x, np.ones(5, np.uint8), 2, 3, 0.5, None, True)
    with pytest.raises(ValueError, match="needs the quotient table"):
        native.divide_rows(0, x, x, None, 1, 1, 0.5, None, False)
    with pytest.raises(ValueError, match="dtype must be"):
        native.divide_rows(7, x, x, None, 1, 1, 0.5, None, True)
    with pytest.raises(TypeError):
        native.divide_rows(2, x, x.copy().tobytes(), None, 1, 1, 0.5, None, True)  # read-only

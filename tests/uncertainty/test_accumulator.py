"""The statistics as the accumulator computes them, sample by sample, against numpy on the
whole stack of samples; the chunking and the stopping rule of the sampler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from service import errors
from service.uncertainty import CLASS_STATISTICS, Statistics, sample_statistics
from service.uncertainty.accumulator import Accumulator
from service.uncertainty.sampler import CHECK_EVERY

MOMENTS = ("mean", "variance", "std", "sem")


def accumulate(samples: NDArray[Any], stats: Statistics) -> dict[str, NDArray[Any]]:
    acc = Accumulator("out", stats)
    for sample in samples:
        acc.add(sample)
    return acc.results(stats.names)


def dirichlet(shape: tuple[int, ...], classes: int, seed: int = 0) -> NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(classes, 0.7), size=shape)


def reference_classes(p: NDArray[np.float64], axis: int = -1) -> dict[str, NDArray[Any]]:
    """The class statistics straight from their definitions on (T, ..., C) samples."""
    axis = axis % (p.ndim - 1) + 1
    mean = p.mean(axis=0)

    def h(q: NDArray[np.float64], ax: int) -> NDArray[np.float64]:
        logs = np.log(np.where(q > 0, q, 1.0))
        return np.asarray(-(q * logs).sum(axis=ax))

    votes = np.zeros(mean.shape)
    winners = p.argmax(axis=axis)
    for c in range(p.shape[axis]):
        votes_c = (winners == c).sum(axis=0)
        np.moveaxis(votes, axis - 1, 0)[c] = votes_c
    top = np.sort(mean, axis=axis - 1)
    return {
        "entropy": h(mean, axis - 1),
        "expected_entropy": h(p, axis).mean(axis=0),
        "mutual_information": h(mean, axis - 1) - h(p, axis).mean(axis=0),
        "variation_ratio": 1 - votes.max(axis=axis - 1) / p.shape[0],
        "margin": np.take(top, -1, axis=axis - 1) - np.take(top, -2, axis=axis - 1),
        "max_probability": mean.max(axis=axis - 1),
    }


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_moments_are_numpys_over_the_stack(dtype: type) -> None:
    samples = (np.random.default_rng(1).standard_normal((37, 3, 5)) * 10 + 3).astype(dtype)
    levels = (0.0, 0.05, 0.5, 0.95, 1.0)
    got = accumulate(samples, Statistics((*MOMENTS, "quantiles"), quantiles=levels))
    wide = samples.astype(np.float64)
    want = {
        "mean": wide.mean(0),
        "variance": wide.var(0),
        "std": wide.std(0),
        "sem": np.sqrt(wide.var(0) / len(samples)),
    }
    for name, value in want.items():
        assert got[name].dtype == dtype
        np.testing.assert_allclose(got[name], value.astype(dtype), rtol=8 * np.finfo(dtype).eps)
    # Quantiles are numpy's default (linear) ones of the samples, exactly.
    quantiles = np.quantile(wide, levels, axis=0).astype(dtype)
    assert got["quantiles"].shape == (5, 3, 5)
    assert np.array_equal(got["quantiles"], quantiles)


def test_moments_in_float64_agree_with_numpy_to_the_last_bits() -> None:
    samples = np.random.default_rng(2).standard_normal((200, 64)) * 1e3 + 1e4
    got = accumulate(samples, Statistics(MOMENTS))
    np.testing.assert_allclose(got["mean"], samples.mean(0), rtol=1e-15)
    np.testing.assert_allclose(got["variance"], samples.var(0), rtol=1e-11)


def test_an_integer_output_has_float64_statistics() -> None:
    samples = np.arange(12, dtype=np.int32).reshape(4, 3)
    got = accumulate(samples, Statistics(("mean",)))
    assert got["mean"].dtype == np.float64
    assert got["mean"].tolist() == [4.5, 5.5, 6.5]


@pytest.mark.parametrize("axis", [-1, 1])
def test_class_statistics_follow_their_definitions(axis: int) -> None:
    p = dirichlet((16, 4, 3), 6)  # T=16, batch 4, 3 positions, 6 classes last
    if axis == 1:
        p = np.moveaxis(p, -1, 2)  # (T, 4, 6, 3): the classes on the sample's axis 1
    got = accumulate(p, Statistics(CLASS_STATISTICS, class_axis=axis))
    want = reference_classes(p, axis)
    for name in CLASS_STATISTICS:
        assert got[name].shape == (4, 3), name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-15, err_msg=name)
    assert (got["mutual_information"] > 0).all()


def test_softmax_first_reads_logits() -> None:
    logits = np.random.default_rng(3).standard_normal((9, 5, 4)) * 3
    got = accumulate(logits, Statistics(("mean", "entropy", "mutual_information"), softmax=True))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(got["mean"], probs.mean(0), rtol=1e-14)
    want = reference_classes(probs)
    for name in ("entropy", "mutual_information"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-12)
    with pytest.raises(errors.InvalidInferRequest, match="not class probabilities"):
        accumulate(logits, Statistics(("entropy",)))


def test_one_sample_has_no_spread_and_no_disagreement() -> None:
    p = dirichlet((1, 3), 4)
    names = (*MOMENTS, "quantiles", *CLASS_STATISTICS)
    got = accumulate(p, Statistics(names, quantiles=(0.1, 0.9)))
    for name in ("variance", "std", "sem", "mutual_information", "variation_ratio"):
        assert (got[name] == 0).all(), name
    assert np.array_equal(got["quantiles"], np.stack([p[0], p[0]]))
    np.testing.assert_allclose(got["entropy"], got["expected_entropy"], rtol=1e-15)


def test_certain_classes_have_zero_entropy_not_nan() -> None:
    p = np.zeros((4, 2, 3))
    p[:, 0, 1] = 1.0  # every pass certain of class 1
    p[:2, 1, 0] = 1.0  # half the passes class 0, half class 2
    p[2:, 1, 2] = 1.0
    got = accumulate(p, Statistics(CLASS_STATISTICS))
    assert got["entropy"][0] == 0 and got["expected_entropy"][0] == 0
    assert got["mutual_information"][0] == 0 and got["variation_ratio"][0] == 0
    assert got["margin"][0] == 1 and got["max_probability"][0] == 1
    np.testing.assert_allclose(got["mutual_information"][1], np.log(2), rtol=1e-15)
    assert got["variation_ratio"][1] == 0.5 and got["margin"][1] == 0
    assert all(np.isfinite(v).all() for v in got.values())


def test_non_finite_samples_give_numpys_mean_and_a_nan_spread() -> None:
    samples = np.ones((4, 3), np.float32)
    samples[1, 0] = np.inf
    samples[2, 1] = np.nan
    samples[0, 2] = -np.inf
    samples[3, 2] = np.inf
    got = accumulate(samples, Statistics(MOMENTS))
    with np.errstate(invalid="ignore"):
        want_mean = samples.astype(np.float64).mean(0)
    assert np.array_equal(got["mean"], want_mean.astype(np.float32), equal_nan=True)
    assert got["mean"][0] == np.inf
    for name in ("variance", "std", "sem"):
        assert np.isnan(got[name]).all(), name


@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "NaN values"), (-0.25, "negative values"), (0.5, "sums to 1.5")],
)
def test_values_that_are_not_probabilities_are_refused(value: float, message: str) -> None:
    p = dirichlet((3, 2), 3)
    p[1, 0, 0] += value if not np.isnan(value) else np.nan
    if value == -0.25:
        p[1, 0, 0] = -0.25
    with pytest.raises(errors.InvalidInferRequest, match=message):
        accumulate(p, Statistics(("entropy",)))


def test_probabilities_may_miss_one_by_float16_rounding() -> None:
    p = dirichlet((3, 5), 10).astype(np.float16)
    assert np.abs(p.astype(np.float64).sum(-1) - 1).max() > 0  # rounded, yet accepted
    got = accumulate(p, Statistics(("entropy",)))
    assert got["entropy"].dtype == np.float16


def test_an_empty_batch_has_empty_statistics() -> None:
    samples = np.zeros((8, 0, 4), np.float32)
    got = accumulate(samples, Statistics((*MOMENTS, *CLASS_STATISTICS)))
    assert got["mean"].shape == (0, 4) and got["entropy"].shape == (0,)


@pytest.mark.parametrize(
    ("shape", "axis", "message"), [((3, 4), 2, "not an axis"), ((3, 1), -1, "1 class")]
)
def test_a_class_axis_that_is_not_one_is_refused(
    shape: tuple[int, ...], axis: int, message: str
) -> None:
    with pytest.raises(errors.InvalidInferRequest, match=message):
        accumulate(np.ones((2, *shape)), Statistics(("entropy",), class_axis=axis))


# -- the sampler ---------------------------------------------------------------------------


def drawing_from(samples: Mapping[str, NDArray[Any]], calls: list[tuple[int, int]]) -> Any:
    def draw(first: int, count: int) -> dict[str, NDArray[Any]]:
        calls.append((first, count))
        return {name: s[first : first + count] for name, s in samples.items()}

    return draw


def test_chunking_changes_no_bit_of_the_statistics() -> None:
    rng = np.random.default_rng(4)
    samples = {"a": rng.standard_normal((50, 3, 7)).astype(np.float32), "b": dirichlet((50, 2), 3)}
    stats = Statistics((*MOMENTS, "entropy", "mutual_information"), softmax=True)
    wanted = {"a": stats.names, "b": stats.names}
    answers = []
    for chunk_bytes in (1, 3 * 7 * 4 * 3, 1 << 30):
        calls: list[tuple[int, int]] = []
        sampled = sample_statistics(
            drawing_from(samples, calls), wanted, stats, ceiling=50, chunk_bytes=chunk_bytes
        )
        assert sampled.samples_used == 50
        assert sum(count for _, count in calls) == 50
        assert calls[0] == (0, 1)  # the first pass alone, to size the chunks
        assert max(count for _, count in calls) == min(CHECK_EVERY, max(1, chunk_bytes // 168))
        answers.append(sampled.statistics)
    for other in answers[1:]:
        for out in ("a", "b"):
            for name in stats.names:
                assert np.array_equal(answers[0][out][name], other[out][name]), (out, name)


@pytest.mark.parametrize("tolerance", [0.5, 0.2, 0.05, 1e-9])
def test_sampling_stops_at_the_first_check_where_every_sem_is_within_tolerance(
    tolerance: float,
) -> None:
    samples = {"y": np.random.default_rng(5).standard_normal((60, 4)) * [[0.5, 1, 2, 0]]}
    stats = Statistics(("mean", "sem"), tolerance=tolerance)
    sampled = sample_statistics(drawing_from(samples, []), {"y": stats.names}, stats, ceiling=60)
    # The rule, from the samples: the first multiple of 8 whose largest sem is within it.
    expected = 60
    for t in range(CHECK_EVERY, 60, CHECK_EVERY):
        if np.sqrt(samples["y"][:t].var(0) / t).max() <= tolerance:
            expected = t
            break
    assert sampled.samples_used == expected
    fixed = Statistics(("mean", "sem"))
    again = sample_statistics(
        drawing_from(samples, []), {"y": fixed.names}, fixed, ceiling=expected
    )
    for name in ("mean", "sem"):
        assert np.array_equal(sampled.statistics["y"][name], again.statistics["y"][name])
    assert sampled.statistics["y"]["sem"].max() <= tolerance or expected == 60


def test_a_nan_never_converges() -> None:
    y = np.zeros((30, 2))
    y[3, 1] = np.nan
    stats = Statistics(("mean",), tolerance=1.0)
    sampled = sample_statistics(drawing_from({"y": y}, []), {"y": stats.names}, stats, ceiling=30)
    assert sampled.samples_used == 30
    y[3, 1] = 0.0
    sampled = sample_statistics(drawing_from({"y": y}, []), {"y": stats.names}, stats, ceiling=30)
    assert sampled.samples_used == CHECK_EVERY

"""One output's statistics, accumulated a sample at a time in float64.

Each sample is added in order: the running sum (the mean is sum / T), Welford's sum of squared
deviations about the running mean (the variance), the sum of each pass's entropy, and the
class votes. Adding in order makes the figures depend on T alone, never on how the samples
were grouped into chunks, so a run that stops at T equals a run asked for T, bit for bit.
Only quantiles keep the samples: an order statistic needs all of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from service import errors
from service.uncertainty.statistics import CLASS_STATISTICS, Statistics

#: How far a pass's class probabilities may sum from 1 (absolute, in float64) before the
#: output is refused as not probabilities: float16 rounding of each class stays within it.
PROBABILITY_TOLERANCE: Final = 1e-3

_F64: Final = np.float64
_EXPECTED_NEEDS: Final = frozenset({"expected_entropy", "mutual_information"})
_SPREAD_NEEDS: Final = frozenset({"variance", "std", "sem"})


def softmax(logits: NDArray[Any], axis: int) -> NDArray[np.float64]:
    """Softmax along ``axis`` in float64, shifted by the maximum so that no exp overflows."""
    wide = logits.astype(_F64)
    wide -= wide.max(axis=axis, keepdims=True)
    np.exp(wide, out=wide)
    wide /= wide.sum(axis=axis, keepdims=True)
    return wide


def entropy(probabilities: NDArray[np.float64], axis: int) -> NDArray[np.float64]:
    """Shannon entropy in nats along ``axis``, with 0·ln 0 = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = probabilities * np.log(probabilities)
    terms[probabilities == 0] = 0.0
    result: NDArray[np.float64] = -terms.sum(axis=axis)
    return result


def check_probabilities(p: NDArray[np.float64], axis: int, output: str) -> None:
    """Refuse a pass whose values along the class axis are not a distribution."""
    if not (p >= 0).all():  # NaN fails too
        bad = "NaN" if np.isnan(p).any() else "negative"
        raise errors.InvalidInferRequest(
            f"Output {output!r} holds {bad} values, so it is not class probabilities: "
            "set mc_softmax to true if it holds logits, or mc_class_axis if the classes lie "
            "on another axis."
        )
    sums = p.sum(axis=axis)
    if not (np.abs(sums - 1.0) <= PROBABILITY_TOLERANCE).all():
        worst = float(sums.flat[int(np.nanargmax(np.abs(sums - 1.0)))])
        raise errors.InvalidInferRequest(
            f"Output {output!r} is not class probabilities along axis {axis}: a row sums to "
            f"{worst:.6g}, not 1 within {PROBABILITY_TOLERANCE:g}. Set mc_softmax to true if it "
            "holds logits, or mc_class_axis if the classes lie on another axis."
        )


class Accumulator:
    """The statistics ``stats`` asks of one output, fed one sample at a time."""

    def __init__(self, output: str, stats: Statistics) -> None:
        self.output = output
        self.stats = stats
        wanted = set(stats.names)
        self._classes = stats.classifies
        self._spread = bool(wanted & _SPREAD_NEEDS) or stats.tolerance is not None
        self._expected = bool(wanted & _EXPECTED_NEEDS)
        self._votes_wanted = "variation_ratio" in wanted
        self._keep = "quantiles" in wanted
        self.count = 0
        self._axis = 0
        self._dtype: np.dtype[Any] = np.dtype(_F64)
        self._sum: NDArray[np.float64] | None = None
        self._squares: NDArray[np.float64] | None = None
        self._scratch: NDArray[np.float64] | None = None
        self._entropy_sum: NDArray[np.float64] | None = None
        self._votes: NDArray[np.int32] | None = None
        self._kept: list[NDArray[Any]] = []

    def add(self, sample: NDArray[Any]) -> None:
        """One more pass's output (without the sample axis). Infinities and NaN are values
        like any other: they reach the statistics as IEEE arithmetic carries them."""
        with np.errstate(invalid="ignore", over="ignore"):
            self._add(sample)

    def _add(self, sample: NDArray[Any]) -> None:
        if self.count == 0:
            self._start(sample)
        values: NDArray[Any] = sample
        if self._classes:
            values = softmax(sample, self._axis) if self.stats.softmax else sample.astype(_F64)
            check_probabilities(values, self._axis, self.output)
        t = self.count + 1
        assert self._sum is not None
        if self._spread:
            self._welford(values, t)
        else:
            self._sum += values
        if self._expected:
            assert self._entropy_sum is not None
            self._entropy_sum += entropy(values, self._axis)
        if self._votes_wanted:
            assert self._votes is not None
            self._votes += _one_hot_argmax(values, self._axis)
        if self._keep:
            self._kept.append(values if self._classes else sample.copy())
        self.count = t

    def _start(self, sample: NDArray[Any]) -> None:
        kind = sample.dtype.kind
        self._dtype = sample.dtype if kind == "f" else np.dtype(_F64)
        if self._classes:
            self._axis = _class_axis(sample, self.stats.class_axis, self.output)
        self._sum = np.zeros(sample.shape, _F64)
        if self._spread:
            self._squares = np.zeros(sample.shape, _F64)
            self._scratch = np.empty(sample.shape, _F64)
        if self._expected:
            self._entropy_sum = np.zeros(_without(sample.shape, self._axis), _F64)
        if self._votes_wanted:
            self._votes = np.zeros(sample.shape, np.int32)

    def _welford(self, x: NDArray[Any], t: int) -> None:
        """Add x to the sum and to Welford's M2: with d = x - (the mean before x), M2 grows
        by d² (t - 1) / t, which is (x - old mean)(x - new mean)."""
        assert self._sum is not None and self._squares is not None and self._scratch is not None
        if t > 1:
            d = self._scratch
            np.divide(self._sum, t - 1, out=d)
            np.subtract(x, d, out=d)
            d *= d
            d *= (t - 1) / t
            self._squares += d
        self._sum += x

    def largest_sem(self) -> float:
        """The largest standard error of the mean over every element (NaN where any is)."""
        if self._squares is None or self._squares.size == 0:
            return 0.0
        return math.sqrt(float(self._squares.max())) / self.count

    def results(self, names: Iterable[str]) -> dict[str, NDArray[Any]]:
        """Each statistic of ``names`` over the samples added, in the output's dtype."""
        assert self._sum is not None and self.count > 0
        t = self.count
        mean = self._sum / t
        found: dict[str, NDArray[Any]] = {}
        with np.errstate(invalid="ignore", over="ignore"):
            for name in names:
                found[name] = self._statistic(name, mean, t)
        return {name: value.astype(self._dtype, copy=False) for name, value in found.items()}

    def _statistic(self, name: str, mean: NDArray[np.float64], t: int) -> NDArray[Any]:
        axis = self._axis
        if name == "mean":
            return mean
        if name in _SPREAD_NEEDS:
            assert self._squares is not None
            variance = self._squares / t
            # The mean of a sample with an infinity or NaN is itself not finite; its variance
            # is undefined (numpy's var answers NaN there too).
            variance[~np.isfinite(mean)] = np.nan
            if name == "variance":
                return variance
            return np.sqrt(variance) if name == "std" else np.sqrt(variance / t)
        if name == "quantiles":
            samples = np.stack(self._kept).astype(_F64, copy=False)
            return np.quantile(samples, self.stats.quantiles, axis=0)
        if name == "entropy":
            return entropy(mean, axis)
        if name == "expected_entropy":
            assert self._entropy_sum is not None
            return self._entropy_sum / t
        if name == "mutual_information":
            assert self._entropy_sum is not None
            # Zero up to rounding when every pass agrees; clamped as torch-uncertainty does.
            return np.maximum(entropy(mean, axis) - self._entropy_sum / t, 0.0)
        if name == "variation_ratio":
            assert self._votes is not None
            return np.asarray(1.0 - self._votes.max(axis=axis) / t)
        if name == "max_probability":
            return np.asarray(mean.max(axis=axis))
        if name == "margin":
            top = np.sort(mean, axis=axis)
            last = top.shape[axis]
            return np.asarray(np.take(top, last - 1, axis=axis) - np.take(top, last - 2, axis=axis))
        raise AssertionError(f"no statistic {name!r}")  # pragma: no cover - names are checked


def _one_hot_argmax(values: NDArray[Any], axis: int) -> NDArray[np.bool_]:
    """True at each row's largest class along ``axis`` (the first, on a tie)."""
    winner = np.expand_dims(values.argmax(axis=axis), axis)
    classes = np.arange(values.shape[axis]).reshape(
        [-1 if i == axis else 1 for i in range(values.ndim)]
    )
    one_hot: NDArray[np.bool_] = classes == winner
    return one_hot


def _class_axis(sample: NDArray[Any], axis: int, output: str) -> int:
    if not -sample.ndim <= axis < sample.ndim:
        raise errors.InvalidInferRequest(
            f"mc_class_axis {axis} is not an axis of output {output!r}, whose shape is "
            f"{list(sample.shape)} (per sample)."
        )
    axis %= sample.ndim
    if sample.shape[axis] < 2:
        raise errors.InvalidInferRequest(
            f"Output {output!r} has {sample.shape[axis]} class(es) on axis {axis}; the class "
            f"statistics ({', '.join(CLASS_STATISTICS)}) need a probability per class, two or more."
        )
    return axis


def _without(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1 :]

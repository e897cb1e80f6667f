"""What a Monte Carlo request asks for: the statistics by name, the class axis, the quantile
levels and the tolerance, read from the V2 parameters and checked once."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from service import errors

#: Statistics of any output, over the T samples (population variance, ddof 0).
MOMENT_STATISTICS: Final = ("mean", "variance", "std", "sem", "quantiles")
#: Statistics of a classifier's output: they reduce the class axis.
CLASS_STATISTICS: Final = (
    "entropy",
    "expected_entropy",
    "mutual_information",
    "variation_ratio",
    "margin",
    "max_probability",
)
STATISTICS: Final = MOMENT_STATISTICS + CLASS_STATISTICS
#: What ``mc_statistics: true`` asks for.
DEFAULT_STATISTICS: Final = ("mean", "variance")
#: Most quantile levels one request may ask for.
MAX_QUANTILES: Final = 64


@dataclass(frozen=True, slots=True)
class Statistics:
    """The statistics one request asks of each output it names."""

    names: tuple[str, ...]
    class_axis: int = -1
    softmax: bool = False
    quantiles: tuple[float, ...] = ()
    tolerance: float | None = None

    @property
    def classifies(self) -> bool:
        """Whether the outputs are read as class probabilities (checked, or made by softmax)."""
        return self.softmax or any(name in CLASS_STATISTICS for name in self.names)


def statistics_of(
    asked: bool | str,
    *,
    class_axis: int,
    softmax: bool,
    quantiles: str | None,
    tolerance: float | None,
) -> Statistics | None:
    """The request's statistics (None: it asks for the samples themselves). A parameter that
    only means something with statistics, given without them, is refused, not ignored."""
    if asked is False:
        extra = [
            name
            for name, given in (
                ("mc_quantiles", quantiles is not None),
                ("mc_tolerance", tolerance is not None),
                ("mc_softmax", softmax),
                ("mc_class_axis", class_axis != -1),
            )
            if given
        ]
        if extra:
            raise errors.InvalidInferRequest(f"{extra[0]} needs mc_statistics.")
        return None
    names = DEFAULT_STATISTICS if asked is True else _names(asked)
    levels = _levels(quantiles) if quantiles is not None else ()
    if "quantiles" in names and not levels:
        raise errors.InvalidInferRequest(
            'The statistic quantiles needs mc_quantiles, the levels: e.g. "0.05,0.95".'
        )
    if levels and "quantiles" not in names:
        raise errors.InvalidInferRequest("mc_quantiles is given, but quantiles is not asked for.")
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance > 0):
        raise errors.InvalidInferRequest(
            f"mc_tolerance must be a finite number above 0, not {tolerance!r}."
        )
    return Statistics(names, class_axis, softmax, levels, tolerance)


def _names(asked: str) -> tuple[str, ...]:
    names: list[str] = []
    for part in asked.split(","):
        name = part.strip()
        if name not in STATISTICS:
            raise errors.InvalidInferRequest(
                f"Unknown statistic {name!r} in mc_statistics; known: {', '.join(STATISTICS)} "
                "(comma-separated), or true for mean and variance."
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def _levels(quantiles: str) -> tuple[float, ...]:
    parts = [part.strip() for part in quantiles.split(",")]
    if len(parts) > MAX_QUANTILES:
        raise errors.InvalidInferRequest(
            f"mc_quantiles has {len(parts)} levels; at most {MAX_QUANTILES} are allowed."
        )
    levels = []
    for part in parts:
        try:
            level = float(part)
        except ValueError:
            level = math.nan
        if not 0.0 <= level <= 1.0:
            raise errors.InvalidInferRequest(
                f"mc_quantiles: {part!r} is not a level between 0 and 1 "
                '(comma-separated, e.g. "0.05,0.95").'
            )
        levels.append(level)
    return tuple(levels)


def answer_plan(
    outputs: Sequence[str], wanted: Sequence[str] | None, names: Sequence[str]
) -> dict[str, tuple[str, str]]:
    """The answer's tensors in order, each ``OUT_<name>`` mapped to (OUT, name).

    ``wanted`` (the request's ``outputs``) may name a statistic (``probs_mean``) or a model
    output (``probs``: each statistic asked of it); None asks for every output's.
    """
    everything = {f"{out}_{name}": (out, name) for out in outputs for name in names}
    if wanted is None:
        return everything
    plan: dict[str, tuple[str, str]] = {}
    for asked in wanted:
        if asked in everything:
            plan[asked] = everything[asked]
        elif asked in outputs:
            plan.update((f"{asked}_{name}", (asked, name)) for name in names)
        else:
            raise errors.InvalidInferRequest(
                f"Unknown output {asked!r}; with these mc_statistics the model answers "
                f"{', '.join(everything)}, or all of an output's by its name "
                f"({', '.join(outputs)})."
            )
    return plan

"""Monte Carlo sampling that accumulates as it goes, and may stop once it has converged.

Samples are drawn in chunks (a few passes run as one batch) and added to each output's
accumulator in order, so the server never holds T samples of an output (quantiles aside).
With a tolerance, the rule is checked every ``CHECK_EVERY`` samples: stop once the largest
standard error of the mean, over every element of the outputs asked for, is at most the
tolerance, or at the ceiling. The check points do not depend on the chunk size, so the same
request stops at the same T whatever memory allowed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from numpy.typing import NDArray

from service.uncertainty.accumulator import Accumulator
from service.uncertainty.statistics import Statistics

#: The stopping rule is checked after every this many samples (the first check is a pilot
#: of this many: a standard error from two or three samples says little).
CHECK_EVERY: Final = 8
#: A chunk's outputs are kept under this many bytes: the passes of a chunk run as one batch.
CHUNK_BYTES: Final = 32 * 1024 * 1024

#: Draws samples ``first`` to ``first + count - 1``: each output with a leading axis of count.
Draw = Callable[[int, int], Mapping[str, NDArray[Any]]]


@dataclass(frozen=True, slots=True)
class Sampled:
    """The statistics of each output asked for, and how many samples they are over."""

    statistics: dict[str, dict[str, NDArray[Any]]]
    samples_used: int


def sample_statistics(
    draw: Draw,
    wanted: Mapping[str, tuple[str, ...]],
    stats: Statistics,
    *,
    ceiling: int,
    chunk_bytes: int = CHUNK_BYTES,
) -> Sampled:
    """Draw up to ``ceiling`` samples and answer ``wanted[output]``'s statistics of each
    output; with ``stats.tolerance``, stop early once the rule above holds."""
    accumulators = {out: Accumulator(out, stats) for out in wanted}
    chunk = 1  # the first pass alone tells how large a pass's outputs are
    drawn = 0
    while drawn < ceiling:
        next_check = (drawn // CHECK_EVERY + 1) * CHECK_EVERY
        count = min(chunk, next_check - drawn, ceiling - drawn)
        produced = draw(drawn, count)
        for out, accumulator in accumulators.items():
            values = produced[out]
            for i in range(count):
                accumulator.add(values[i])
        if drawn == 0:
            per_pass = sum(int(values[0].nbytes) for values in produced.values()) or 1
            chunk = max(1, min(CHECK_EVERY, chunk_bytes // per_pass))
        drawn += count
        if drawn % CHECK_EVERY == 0 and _converged(accumulators.values(), stats.tolerance):
            break
    return Sampled({out: accumulators[out].results(names) for out, names in wanted.items()}, drawn)


def _converged(accumulators: Iterable[Accumulator], tolerance: float | None) -> bool:
    """Whether every element's standard error of the mean is at most ``tolerance`` (a NaN
    one never is)."""
    return tolerance is not None and all(a.largest_sem() <= tolerance for a in accumulators)

"""The benchmark's statistics: a figure over runs, its comparison with a limit, the table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Stat:
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def show(self, scale: float = 1.0, unit: str = "") -> str:
        med, lo, hi = (v * scale for v in (self.median, min(self.values), max(self.values)))
        digits = _digits(med)
        suffix = f" {unit}" if unit else ""
        return f"{med:.{digits}f}{suffix} ({lo:.{digits}f}-{hi:.{digits}f})"


def _digits(value: float) -> int:
    value = abs(value)
    return 0 if value >= 100 else 1 if value >= 10 else 2 if value >= 1 else 3


def ms(stat: Stat) -> str:
    return stat.show(1000, "ms")


@dataclass
class Target:
    """A goal on a ratio: ``at_least`` (higher is better) or at most (lower is better)."""

    bound: float
    at_least: bool

    def verdict(self, ratio: float) -> str:
        sign = ">=" if self.at_least else "<="
        met = ratio >= self.bound if self.at_least else ratio <= self.bound
        if met:
            return f"{sign} {self.bound:g}: met"
        return f"{sign} {self.bound:g}: **missed** by {abs(ratio - self.bound):.2f}"


@dataclass
class Row:
    benchmark: str
    measured: str
    limit: str
    limit_measured: str
    ratio: str
    target: str = "-"


def compare(
    benchmark: str,
    measured: Stat,
    limit: str,
    baseline: Stat,
    *,
    higher_is_better: bool,
    what: str,
    target: Target | None = None,
    show: Callable[[Stat], str] = ms,
) -> Row:
    """A row; the ratio is limit/measured (speeds) or measured/limit (times, sizes)."""
    if higher_is_better:  # e.g. copy time / kernel time: 1.0 is copy speed
        ratio = baseline.median / measured.median
    else:
        ratio = measured.median / baseline.median
    return Row(
        benchmark,
        show(measured),
        limit,
        show(baseline),
        f"{ratio:.2f} {what}",
        target.verdict(ratio) if target else "-",
    )


def table(rows: list[Row]) -> str:
    head = ("benchmark", "measured", "limit (same run)", "limit measured", "ratio", "target")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (r.benchmark, r.measured, r.limit, r.limit_measured, r.ratio, r.target)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timed(fn: Callable[[], object], inner: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner

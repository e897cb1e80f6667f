"""Monte Carlo statistics of a served model: what a request asks for, how the samples are
accumulated without holding them, and when sampling may stop."""

from service.uncertainty.accumulator import Accumulator
from service.uncertainty.sampler import Sampled, sample_statistics
from service.uncertainty.statistics import (
    CLASS_STATISTICS,
    STATISTICS,
    Statistics,
    answer_plan,
    statistics_of,
)

__all__ = [
    "CLASS_STATISTICS",
    "STATISTICS",
    "Accumulator",
    "Sampled",
    "Statistics",
    "answer_plan",
    "sample_statistics",
    "statistics_of",
]

"""One module per benchmark section; each ``run(ctx)`` returns its table rows."""

from __future__ import annotations

from collections.abc import Callable

from bench.common import Context
from bench.scenarios import (
    binary,
    grpc,
    json_body,
    kernel,
    modes,
    monte_carlo,
    portable,
    rss,
    small,
    statistics,
    workers,
)
from bench.stats import Row

#: section name (``--only``/``--skip``) -> its scenario, in the table's order.
SCENARIOS: dict[str, Callable[[Context], list[Row]]] = {
    "kernel": kernel.run,
    "http": binary.run,
    "modes": modes.run,
    "json": json_body.run,
    "small": small.run,
    "rss": rss.run,
    "workers": workers.run,
    "montecarlo": monte_carlo.run,
    "portable": portable.run,
    "statistics": statistics.run,
    "grpc": grpc.run,
}

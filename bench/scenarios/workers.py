"""serve --workers 2 against --workers 1 under the small .npy load."""

from __future__ import annotations

from bench.common import Context, log
from bench.scenarios.small import LoadStats, load_point, preflight, small_bodies
from bench.stats import Row, Target, compare


def run(ctx: Context) -> list[Row]:
    """Small .npy /apply at 8 connections: serve --workers 2 against --workers 1."""
    one = ctx.service()
    log("starting spatial-dropout serve --workers 2")
    two = ctx.procs.service(workers=2)
    form = small_bodies(ctx.procs.dir)[".npy /apply"]
    for proc in (one, two):
        preflight(proc.port, form)
    stats = {1: LoadStats(), 2: LoadStats()}
    for run in range(ctx.repeat):
        for workers, proc in ((1, one), (2, two)):
            log(f"workers {workers}, 8 conn: run {run + 1}/{ctx.repeat}")
            got = load_point(proc.port, form, 8, ctx.args.duration)
            stats[workers].add(got)
    ctx.procs.stop(two)
    return [
        compare(
            "small .npy /apply, 8 conn, serve --workers 2: req/s",
            stats[2].rps,
            "serve --workers 1",
            stats[1].rps,
            higher_is_better=False,
            what="x one worker",
            # Scaling, where the load generator shares the 2 cores with the workers.
            target=Target(1.5, at_least=True),
            show=lambda s: s.show(1, "req/s"),
        )
    ]

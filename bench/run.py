"""The benchmark: how close each path of the service comes to its physical limit.

Not a test: nothing here asserts a time. Every figure is ``median (min-max)`` over
``--repeat`` runs, next to a limit measured in the same run, interleaved with it (so drift on
a shared machine hits both), and the ratio of the two. Progress goes to stderr; stdout gets one
markdown table, ready to paste into the README.

    python -m bench.run                    # everything, about 6 minutes on 2 cores
    python -m bench.run --quick            # smoke run, under 2 minutes
    python -m bench.run --only kernel,rss --repeat 9

Sections (``--only``/``--skip``): kernel, http, modes, json, small, rss, workers, montecarlo,
portable, statistics, grpc.
Every server is a child process bound to 127.0.0.1, stopped at the end, on Ctrl-C and on errors.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench import load
from bench.common import Context, log
from bench.procs import Processes
from bench.scenarios import SCENARIOS
from bench.stats import Row, table
from harness.process import ROOT

SECTIONS = tuple(SCENARIOS)


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def caption(args: argparse.Namespace, elapsed: float, load_average: str) -> str:
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--", "service"):
        commit += " + uncommitted changes in service/"
    command = " ".join(["python -m bench.run", *sys.argv[1:]]).strip()
    tool = "wrk (1 thread)" if load.tool_name() == "wrk" else "bench/load.py (asyncio, 1 process)"
    blas = [
        f"{k}={os.environ[k]}" for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ
    ]
    return (
        f"Measured {dt.date.today().isoformat()} at commit {commit}, on {os.cpu_count()} cores "
        f"({_cpu()}, load average {load_average} at the start), Python "
        f"{platform.python_version()}, numpy {np.__version__}"
        f"{', ' + ' '.join(blas) if blas else ''}: `{command}` ({elapsed / 60:.1f} min; "
        f"{args.repeat} runs per figure, shown as median (min-max)). Large requests: a raw-socket "
        f"HTTP/1.1 client (bench/client.py: keep-alive, sendall + recv_into a reused buffer), "
        f"timed from first byte sent to last byte received. Load: {tool}, "
        f"{args.duration:g} s per point."
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="2 runs, 1 s load points")
    parser.add_argument("--repeat", type=int, help="runs per figure (default 5; quick 2)")
    parser.add_argument("--duration", type=float, help="seconds per load point (5; quick 1)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (2 if args.quick else 5)
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    wanted = [s for s in args.only.split(",") if s]
    skipped = {s for s in args.skip.split(",") if s}
    unknown = (set(wanted) | skipped) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; known: {SECTIONS}")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.sections = [s for s in SECTIONS if s in wanted and s not in skipped]
    return args


@contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    # Ctrl-C too, even where the shell started us with SIGINT ignored (a background job).
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    started = time.monotonic()
    load_average = f"{os.getloadavg()[0]:.1f}"
    rows: list[Row] = []
    failed = interrupted = False
    log(f"sections: {', '.join(args.sections)}; {args.repeat} runs; load via {load.tool_name()}")
    with _signals_as_interrupt(), Processes() as procs:
        ctx = Context(args, procs)
        try:
            for section in args.sections:
                log(f"== {section}")
                try:
                    rows += SCENARIOS[section](ctx)
                except Exception as exc:
                    failed = True
                    traceback.print_exc()
                    rows.append(Row(section, f"FAILED: {exc}".replace("\n", " ")[:200], *"----"))
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted: servers stopped; the table has the sections that finished")
    print(caption(args, time.monotonic() - started, load_average))
    print()
    print(table(rows))
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

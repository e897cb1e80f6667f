"""A bounded soak: N clients for S seconds of mixed creates, applies and exports on 127.0.0.1.

    python -m bench.soak                       # 8 clients, 60 s (10 s of it warm-up)
    python -m bench.soak --clients 4 --seconds 20 --warmup 5

It starts its own ``spatial-dropout serve`` (one worker, a fresh SQLite store) on a free
loopback port, drives it with ``harness.soak``'s workload, and prints requests by kind,
errors, and the server's resident memory when warm-up ends and at the end. Exit status 1 if
any request failed or memory grew by 10% or more after warm-up. Not a benchmark: throughput
is reported, not judged.
"""

from __future__ import annotations

import argparse
import sys

from bench.procs import Processes
from harness.soak import MAX_CLIENTS, MAX_SECONDS, MiB, run_soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help=f"at most {MAX_CLIENTS}")
    parser.add_argument("--seconds", type=float, default=60.0, help=f"at most {MAX_SECONDS}")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before RSS counts")
    args = parser.parse_args(argv)
    with Processes() as procs:
        service = procs.service(max_body=64 * MiB)
        report = run_soak(
            f"http://127.0.0.1:{service.port}",
            service.pid,
            clients=args.clients,
            seconds=args.seconds,
            warmup=args.warmup,
        )
    print("\n".join(report.lines()))
    failed = sum(report.errors.values()) > 0 or report.growth >= 10.0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

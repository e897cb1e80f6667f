"""A short soak (harness/soak.py's workload, 4 clients for 10 s): zero errors, every kind ran.

The full one (8 clients, 60 s, with the server's memory judged) is ``python -m bench.soak``;
here only correctness is asserted, never speed or memory, which a busy CI machine would blur.
"""

from __future__ import annotations

from pathlib import Path

from harness.soak import MIX, run_soak
from tests.conftest import Server


def test_a_short_soak_of_mixed_requests_has_no_errors(tmp_path: Path) -> None:
    with Server(tmp_path / "layers.sqlite3") as fresh:
        assert fresh.process is not None
        report = run_soak(fresh.url, fresh.process.pid, clients=4, seconds=10, warmup=2)
    print("\n".join(report.lines()))
    assert sum(report.errors.values()) == 0, report.lines()
    ran = {kind for kind, count in report.requests.items() if count}
    assert set(MIX) | {"delete"} <= ran, report.requests

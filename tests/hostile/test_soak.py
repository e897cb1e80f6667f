"""A short soak (bench/soak.py's workload, 4 clients for 10 s): zero errors.

The full one (8 clients, 60 s, with the server's memory judged) is ``python -m bench.soak``;
here only correctness is asserted, never speed or memory, which a busy CI machine would blur.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.soak import MIX, run_soak
from tests.conftest import Server


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path / "layers.sqlite3").start()
    yield server
    server.stop()


def test_a_short_soak_of_mixed_requests_has_no_errors(fresh: Server) -> None:
    assert fresh.process is not None
    report = run_soak(fresh.url, fresh.process.pid, clients=4, seconds=10, warmup=2)
    print("\n".join(report.lines()))
    assert sum(report.errors.values()) == 0, report.lines()
    ran = {kind for kind, count in report.requests.items() if count}
    expected = set(MIX) | {"delete"}
    if report.exports != "on":  # the export route is not served by this build
        expected -= {"export"}
    assert expected <= ran, report.requests

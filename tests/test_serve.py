"""``spatial-dropout serve`` stops gracefully: SIGTERM lets in-flight requests finish, closes
the store (the SQLite WAL folded back into the file), and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest

from harness.process import free_port
from tests.conftest import ROOT, Server
from tests.graceful import apply_while_stopping, dropped_whole_at_half


def test_sigterm_lets_an_in_flight_request_finish_then_exits_0(tmp_path: Path) -> None:
    database = tmp_path / "graceful.sqlite3"
    server = Server(database).start()
    assert server.process is not None
    made = httpx.post(f"{server.url}/layers", json={"name": "slow", "rate": 0.5, "seed": 3})
    assert made.status_code == 201

    x = np.arange(2 * 16 * 16 * 8, dtype=np.float32).reshape(2, 16, 16, 8)
    request = {"layer": "slow", "training": True, "input": x.tolist()}
    try:
        response = apply_while_stopping(
            server.url, request, lambda: server.process.send_signal(signal.SIGTERM)
        )
        assert response.status_code == 200, response.text
        assert dropped_whole_at_half(response.json()["output"], x)
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()

    assert not Path(f"{database}-wal").exists()  # the store closed: WAL checkpointed away
    conn = sqlite3.connect(database)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT name FROM layers").fetchall() == [("slow",)]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("held", "flag", "moved_by"),
    [
        ("HTTP", "--port", "--port or SPATIAL_DROPOUT_PORT"),
        ("gRPC", "--grpc-port", "--grpc-port or SPATIAL_DROPOUT_GRPC_PORT"),
    ],
)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_line_and_exit_1(
    tmp_path: Path, held: str, flag: str, moved_by: str, workers: str
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = {"--port": str(free_port()), "--grpc-port": str(free_port()), flag: str(port)}
        done = subprocess.run(
            [
                str(ROOT / ".venv" / "bin" / "spatial-dropout"),
                "serve",
                "--workers",
                workers,
                *(item for pair in ports.items() for item in pair),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "SPATIAL_DROPOUT_DATABASE_URL": f"sqlite:///{tmp_path}/s.db"},
        )
    assert done.returncode == 1
    assert done.stderr == (
        f"spatial-dropout serve: port {port} on 127.0.0.1 ({held}) is in use; "
        f"choose another with {moved_by}"
        + (" (0 switches gRPC off)" if held == "gRPC" else "")
        + ".\n"
    )
    assert done.stdout == ""

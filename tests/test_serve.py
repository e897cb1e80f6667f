"""``spatial-dropout serve`` stops gracefully: SIGTERM lets in-flight requests finish, closes
the store (the SQLite WAL folded back into the file), and exits 0."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import Server
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

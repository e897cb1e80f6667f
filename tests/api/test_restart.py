"""Layers live in the SQLite file: they survive the server stopping and starting again."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import Server


def test_a_layer_survives_a_restart(tmp_path: Path) -> None:
    server = Server(tmp_path / "restart.sqlite3").start()
    try:
        made = httpx.post(f"{server.url}/layers", json={"rate": 0.3, "name": "kept", "seed": 4})
        assert made.status_code == 201
        x = [[[[1.0, 2.0, 3.0]]]]
        before = httpx.post(
            f"{server.url}/apply", json={"layer": "kept", "training": True, "input": x}
        ).json()
    finally:
        server.stop()
    assert server.database.exists()

    server.start()
    try:
        assert httpx.get(f"{server.url}/layers/kept").json() == made.json()
        after = httpx.post(
            f"{server.url}/apply", json={"layer": "kept", "training": True, "input": x}
        ).json()
        assert after == before  # same seed, same input: the same output after a restart
    finally:
        server.stop()

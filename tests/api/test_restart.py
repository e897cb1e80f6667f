"""Layers live in the SQLite file: they survive the server stopping and starting again."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import Server

X = [[[[1.0, 2.0, 3.0]]]]
#: Seed 7 at rate 0.5 keeps channels 0 and 2 (the README's tour): kept values doubled.
EXPECTED = [[[[2.0, 0.0, 6.0]]]]


def _apply(server: Server) -> dict[str, object]:
    response = httpx.post(
        f"{server.url}/apply", json={"layer": "kept", "training": True, "input": X}
    )
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    assert answer["output"] == EXPECTED and answer["seed"] == 7
    return answer


def test_a_layer_survives_a_restart(tmp_path: Path) -> None:
    with Server(tmp_path / "restart.sqlite3") as server:
        made = httpx.post(f"{server.url}/layers", json={"rate": 0.5, "name": "kept", "seed": 7})
        assert made.status_code == 201, made.text
        before = _apply(server)
    assert server.database.exists()

    with server:
        kept = httpx.get(f"{server.url}/layers/kept")
        assert kept.status_code == 200 and kept.json() == made.json()
        assert _apply(server) == before

"""``spatial-dropout serve`` stops gracefully: SIGTERM lets in-flight requests finish, closes
the store (the SQLite WAL folded back into the file), and exits 0."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import Server


def _in_progress(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("spatial_dropout_http_requests_in_progress "):
            return float(line.split()[1])
    return 0.0


def _poll(condition: object, what: str) -> None:
    """Wait (boundedly) for ``condition()`` to hold; these waits assert no durations."""
    for _ in range(400):
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def _refuses_connections(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=1)
    except httpx.TransportError:
        return True
    return False


def test_sigterm_lets_an_in_flight_request_finish_then_exits_0(tmp_path: Path) -> None:
    database = tmp_path / "graceful.sqlite3"
    server = Server(database).start()
    assert server.process is not None
    made = httpx.post(f"{server.url}/layers", json={"name": "slow", "rate": 0.5, "seed": 3})
    assert made.status_code == 201

    x = np.arange(2 * 16 * 16 * 8, dtype=np.float32).reshape(2, 16, 16, 8)
    body = json.dumps({"layer": "slow", "training": True, "input": x.tolist()}).encode()
    release = threading.Event()

    def slowly() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        release.wait(timeout=60)  # the rest only once the server has been told to stop
        yield body[len(body) // 2 :]

    def post() -> httpx.Response:
        headers = {"content-type": "application/json"}
        return httpx.post(f"{server.url}/apply", content=slowly(), headers=headers, timeout=60)

    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(post)
            # In flight: the slow request and the scrape asking.
            _poll(lambda: _in_progress(server.url) == 2, "the request reached the app")
            server.process.send_signal(signal.SIGTERM)
            _poll(lambda: _refuses_connections(server.url), "the server stopped listening")
            release.set()
            response = pending.result(timeout=60)
        assert response.status_code == 200, response.text
        out = np.asarray(response.json()["output"], dtype=np.float32)
        # Each feature map (sample, channel) kept whole, doubled (rate 0.5), or dropped whole.
        maps = out.transpose(0, 3, 1, 2).reshape(16, -1)
        inputs = x.transpose(0, 3, 1, 2).reshape(16, -1)
        assert all(
            np.array_equal(o, i * 2) or not o.any() for o, i in zip(maps, inputs, strict=True)
        )
        assert server.process.wait(timeout=60) == 0
    finally:
        release.set()
        server.stop()

    assert not Path(f"{database}-wal").exists()  # the store closed: WAL checkpointed away
    conn = sqlite3.connect(database)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT name FROM layers").fetchall() == [("slow",)]
    finally:
        conn.close()

"""Faults: the server killed with SIGKILL mid-burst, and its disk running out of space.

Whatever happens, a layer that got a 201 is there afterwards, whole, and SQLite's own
integrity check passes.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.layers.spec import Layer
from tests.api.helpers import assert_problem, unique
from tests.conftest import Server

BURST_CLIENTS = 8


def kill(server: Server) -> None:
    """SIGKILL: no lifespan shutdown, no checkpoint, no closing of the store."""
    assert server.process is not None
    server.process.kill()
    server.process.wait()


def integrity(database: Path) -> tuple[str, list[dict[str, Any]]]:
    """SQLite's integrity check of the file, and every stored row as the store wrote it."""
    with sqlite3.connect(database) as conn:
        (verdict,) = conn.execute("PRAGMA integrity_check").fetchone()
        rows = [
            {"id": row[0], "name": row[1], **json.loads(row[2]), "created_at": row[3]}
            for row in conn.execute("SELECT id, name, spec, created_at FROM layers")
        ]
    conn.close()
    return str(verdict), rows


def all_layers(client: httpx.Client) -> list[dict[str, Any]]:
    """Every layer, through the API's pages."""
    layers: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = client.get("/layers", params=params)
        assert page.status_code == 200, page.text
        layers += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return layers


def create_burst(url: str, stop: threading.Event, created: list[dict[str, Any]]) -> None:
    """One client creating layers (some named, some named by the server) until stopped or
    the server goes away; every 201 it saw goes into ``created``."""
    with httpx.Client(base_url=url, timeout=10) as client:
        n = 0
        while not stop.is_set():
            n += 1
            spec: dict[str, Any] = {"rate": 0.25, "seed": n, "kind": "spatial_dropout_1d"}
            if n % 2:
                spec["name"] = unique("burst")
            try:
                response = client.post("/layers", json=spec)
            except httpx.TransportError:
                return  # killed
            assert response.status_code == 201, response.text
            created.append(response.json())


def test_layers_that_got_a_201_survive_sigkill_mid_burst(tmp_path: Path) -> None:
    server = Server(tmp_path / "layers.sqlite3")
    acknowledged: list[dict[str, Any]] = []
    try:
        for round_ in range(3):
            server.start()
            stop = threading.Event()
            created: list[dict[str, Any]] = []
            with ThreadPoolExecutor(BURST_CLIENTS) as pool:
                clients = [
                    pool.submit(create_burst, server.url, stop, created)
                    for _ in range(BURST_CLIENTS)
                ]
                deadline = time.monotonic() + 10
                while len(created) < 40 * (round_ + 1) and time.monotonic() < deadline:
                    time.sleep(0.005)
                kill(server)  # with all eight clients mid-request
                stop.set()
            for burst in clients:
                burst.result()  # a client's failed assertion (a 500, say) fails the test here
            assert created, "no create succeeded before the kill"
            acknowledged += created

            verdict, rows = integrity(server.database)
            assert verdict == "ok"
            for row in rows:  # every row is a whole layer (the API would 500 on a broken one)
                Layer.model_validate(row)

        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            stored = {layer["id"]: layer for layer in all_layers(client)}
            for made in acknowledged:
                assert stored.get(made["id"]) == made, f"lost or changed: {made}"
                assert client.get(f"/layers/{made['id']}").json() == made
            names = [layer["name"] for layer in stored.values()]
            assert len(names) == len(set(names))
            assert client.get("/readyz").json()["layers"] == len(stored)
    finally:
        server.stop()
    verdict, rows = integrity(server.database)
    assert verdict == "ok" and len(rows) == len(stored)


# -- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (root only; else a loop-mounted ext4 image; else skip, saying why).

    Under CI the test must run: .ci/run runs as root, where ``mount -t tmpfs`` works, so a
    failure to mount there fails the test instead of hiding it behind a skip.
    """
    mount = tmp_path / "disk"
    mount.mkdir()
    tried = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if tried.returncode != 0:
        image = tmp_path / "disk.img"
        with image.open("wb") as handle:
            handle.truncate(4 * 1024 * 1024)
        made = subprocess.run(
            ["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True, check=False
        )
        looped = (
            subprocess.run(
                ["mount", "-o", "loop", str(image), str(mount)],
                capture_output=True,
                text=True,
                check=False,
            )
            if made.returncode == 0
            else made
        )
        if looped.returncode != 0:
            why = (
                "cannot mount a small filesystem here (needs root: mount -t tmpfs, or mkfs.ext4 "
                f"and mount -o loop): {tried.stderr.strip()} / {looped.stderr.strip()}"
            )
            if os.environ.get("CI"):
                pytest.fail(why)
            pytest.skip(why)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file; its path (delete it to free them)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle:
        block = bytes(64 * 1024)
        while True:
            try:
                handle.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]
    return filler


def test_a_full_disk_refuses_writes_with_507_and_loses_nothing(
    tmp_path: Path, small_disk: Path
) -> None:
    database = small_disk / "layers.sqlite3"
    # The log stays off the small disk: Server keeps it beside its `database`.
    server = Server(
        tmp_path / "log-only.sqlite3", env={"SPATIAL_DROPOUT_DATABASE_URL": f"sqlite:///{database}"}
    ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            before = [
                client.post("/layers", json={"name": unique("pre"), "rate": 0.5, "seed": 7}).json()
                for _ in range(5)
            ]
            filler = fill(small_disk)
            statuses: list[int] = []
            made: list[dict[str, Any]] = []
            for _ in range(300):  # until the store needs a page it cannot have
                # Long names: each row takes room, so the file must grow soon.
                name = unique("full") + "-" + "x" * 100
                response = client.post("/layers", json={"name": name, "rate": 0.5})
                statuses.append(response.status_code)
                if response.status_code == 201:
                    made.append(response.json())
                    continue
                assert_problem(response, 507, "insufficient_storage")
                break
            assert statuses[-1] == 507, f"the disk never filled: {statuses}"
            assert set(statuses) <= {201, 507}

            # Reads still work, and so does the service.
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 200
            for layer in before + made:
                assert client.get(f"/layers/{layer['id']}").json() == layer
            applied = client.post(
                "/apply",
                json={"layer": before[0]["name"], "training": True, "input": [[[[1.0, 2.0]]]]},
            )
            assert applied.status_code == 200, applied.text
            # Still full: refused again, cleanly.
            again = client.post("/layers", json={"name": unique("again"), "rate": 0.5})
            assert again.status_code in (201, 507)
            if again.status_code == 201:
                made.append(again.json())

            os.unlink(filler)  # space again: writes work again
            after = client.post("/layers", json={"name": unique("after"), "rate": 0.5})
            assert after.status_code == 201, after.text
            made.append(after.json())
            listed = {layer["id"] for layer in all_layers(client)}
            assert {layer["id"] for layer in before + made} <= listed
    finally:
        server.stop()
    verdict, rows = integrity(database)
    assert verdict == "ok"
    assert {layer["id"] for layer in before + made} <= {row["id"] for row in rows}

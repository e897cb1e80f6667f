"""Two replicas on one PostgreSQL behind a real HAProxy, under steady load of /apply and /v2
infer: a rolling restart (SIGTERM with a drain, each replica in turn) fails no request, with
no retry by the client nor by the balancer (the drain alone does it); a replica killed with
SIGKILL fails none either, thanks to the balancer's own retries of requests that no server
answered."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.balancer import CHECK_INTERVAL_MS, FALL, Balancer
from tests.conftest import Server
from tests.postgres import PostgresServer

pytestmark = pytest.mark.e2e

#: Longer than HAProxy takes to mark a replica down (inter x fall), with room for a busy CI.
DRAIN_S = CHECK_INTERVAL_MS * FALL / 1000 + 1.5
CLIENTS = 4
X = {"shape": [1, 4, 4, 3], "dtype": "float32", "data": [float(i) for i in range(48)]}
APPLY = {"layer": "roll", "training": True, "seed": 11, "input": X}
INFER = {
    "inputs": [{"name": "input", "shape": [1, 4, 4, 3], "datatype": "FP32", "data": X["data"]}],
    "parameters": {"training": True, "seed": 11},
}


@pytest.fixture(params=[False, True], ids=["rolling", "killed"])
def replicas(
    request: pytest.FixtureRequest, tmp_path: Path, postgres: PostgresServer
) -> Iterator[tuple[Balancer, dict[str, Server]]]:
    env = {
        "SPATIAL_DROPOUT_DATABASE_URL": postgres.new_database(),
        "SPATIAL_DROPOUT_DATABASE_POOL_SIZE": "4",
        "SPATIAL_DROPOUT_DRAIN_SECONDS": str(DRAIN_S),
    }
    servers = {name: Server(tmp_path / f"{name}.sqlite3", env=env) for name in ("a", "b")}
    balancer: Balancer | None = None
    try:
        for server in servers.values():
            server.start()
        made = httpx.post(f"{servers['a'].url}/layers", json={"name": "roll", "rate": 0.5})
        assert made.status_code == 201, made.text
        ports = {n: s.port for n, s in servers.items()}
        balancer = Balancer(ports, tmp_path, retries=request.param).start()
        yield balancer, servers
    finally:
        if balancer is not None:
            balancer.stop()
        for server in servers.values():
            server.stop()


def load(url: str, stop: threading.Event) -> list[tuple[str, int, bool]]:
    """/apply and infer in turn on one keep-alive connection, no retries: (route, status,
    the expected bytes) of each."""
    seen: list[tuple[str, int, bool]] = []
    expected: dict[str, bytes] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            for route, body in (("/apply", APPLY), ("/v2/models/roll/infer", INFER)):
                try:
                    response = client.post(route, json=body)
                except httpx.TransportError as exc:
                    seen.append((f"{route}: {type(exc).__name__}", 0, False))
                    continue
                answer = response.json().get("output") or response.json().get("outputs")
                same = expected.setdefault(route, repr(answer).encode()) == repr(answer).encode()
                seen.append((route, response.status_code, same))
    return seen


def under_load(balancer: Balancer, disturb: object) -> list[tuple[str, int, bool]]:
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        clients = [pool.submit(load, balancer.url, stop) for _ in range(CLIENTS)]
        try:
            time.sleep(1.0)
            disturb()  # type: ignore[operator]
            time.sleep(1.0)
        finally:
            stop.set()
        return [r for future in clients for r in future.result(timeout=60)]


def assert_none_failed(results: list[tuple[str, int, bool]], what: str) -> None:
    failed = [r for r in results if r[1] != 200 or not r[2]]
    print(f"\nFIGURE {what}: {len(results)} requests, {len(failed)} failed")
    assert len(results) > 50
    assert failed == [], failed[:5]


@pytest.mark.parametrize("replicas", [False], indirect=True, ids=["no balancer retries"])
def test_a_rolling_restart_under_load_fails_no_request(
    replicas: tuple[Balancer, dict[str, Server]],
) -> None:
    balancer, servers = replicas
    exits: list[int | None] = []

    def restart_each() -> None:
        for name, server in servers.items():
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            exits.append(server.process.wait(timeout=60))
            server.start()
            balancer.wait_status(dict.fromkeys(servers, "UP"))
            assert name in balancer.status()

    results = under_load(balancer, restart_each)
    assert exits == [0, 0]
    assert_none_failed(results, "rolling restart")


@pytest.mark.parametrize("replicas", [True], indirect=True, ids=["balancer retries"])
def test_a_replica_killed_under_load_fails_no_request(
    replicas: tuple[Balancer, dict[str, Server]],
) -> None:
    balancer, servers = replicas

    def kill_one() -> None:
        victim = servers["a"]
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=10)
        balancer.wait_status({"a": "DOWN", "b": "UP"})
        time.sleep(0.5)  # the survivor alone, for a while
        victim.start()
        balancer.wait_status({"a": "UP", "b": "UP"})

    results = under_load(balancer, kill_one)
    assert_none_failed(results, "one replica killed (SIGKILL)")

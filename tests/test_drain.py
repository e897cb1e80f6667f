"""SIGTERM with ``SPATIAL_DROPOUT_DRAIN_SECONDS``: the replica first reports not ready (/readyz
503 ``draining``, gRPC health NOT_SERVING) and keeps serving, new connections included; then it
stops as without a drain: the port closes, the request in flight finishes, exit 0."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.process import free_port
from tests.conftest import Server
from tests.graceful import apply_while_stopping, dropped_whole_at_half, poll

DRAIN = 3.0


def health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return int(reply.status)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_drains_then_stops(tmp_path: Path, workers: str) -> None:
    env = {"SPATIAL_DROPOUT_DRAIN_SECONDS": str(DRAIN), "SPATIAL_DROPOUT_WORKERS": workers}
    server = Server(tmp_path / "drain.sqlite3", env=env, grpc_port=free_port()).start()
    assert server.process is not None
    made = httpx.post(f"{server.url}/layers", json={"name": "d", "rate": 0.5, "seed": 3})
    assert made.status_code == 201
    assert health(server.grpc_target) == health_pb2.HealthCheckResponse.SERVING
    small = {"layer": "d", "training": True, "input": np.ones((1, 2, 2, 3)).tolist()}
    seen: dict[str, object] = {}

    def sigterm_then_check_the_drain() -> None:
        told = time.monotonic()
        server.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        poll(lambda: httpx.get(f"{server.url}/readyz").status_code == 503, "not ready")
        seen["problem"] = httpx.get(f"{server.url}/readyz").json()["code"]
        seen["grpc"] = health(server.grpc_target)
        served = 0
        # Well inside the drain, every request on a new connection is still served.
        while time.monotonic() - told < DRAIN - 1:
            answer = httpx.post(f"{server.url}/apply", json=small)  # a connection each
            assert answer.status_code == 200, answer.text
            served += 1
        seen["served"] = served

    x = np.arange(2 * 16 * 16 * 8, dtype=np.float32).reshape(2, 16, 16, 8)
    try:
        response = apply_while_stopping(
            server.url,
            {"layer": "d", "training": True, "input": x.tolist()},
            sigterm_then_check_the_drain,
        )
        assert response.status_code == 200, response.text
        assert dropped_whole_at_half(response.json()["output"], x)
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()
    assert seen["problem"] == "draining"
    assert seen["grpc"] == health_pb2.HealthCheckResponse.NOT_SERVING
    assert isinstance(seen["served"], int) and seen["served"] > 0

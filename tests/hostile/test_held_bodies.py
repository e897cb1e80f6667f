"""Memory held for request bodies follows the bytes that arrived, not the Content-Length a
client announces, and all unfinished bodies of a process share one budget (503 past it)."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from harness.process import rss_bytes
from tests.api.helpers import create
from tests.conftest import Server, serving
from tests.hostile.wire import HOST, exchange, http_request, rss_peak

MIB = 1024 * 1024
BUDGET = 4 * MIB
TIMEOUT_SECONDS = 5


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(
        tmp_path_factory,
        "held",
        max_pending_body_bytes=BUDGET,
        body_timeout_seconds=TIMEOUT_SECONDS,
    )


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the default limits (256 MiB bodies, a 1 GiB budget)."""
    yield from serving(tmp_path_factory, "roomy")


def _layer(server: Server) -> str:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        name: str = create(client, rate=0.5, seed=7)["name"]
        return name


def _npy(x: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, x)
    return out.getvalue()


def _npy_head(layer: str, length: int) -> bytes:
    return http_request(
        "POST",
        f"/apply?layer={layer}&training=true&seed=1",
        {"Content-Type": "application/x-npy"},
        content_length=length,
    )


def test_announced_bodies_that_never_come_cost_nothing(roomy: Server) -> None:
    """Eight clients announce 64 MiB each and send 48 bytes: the server holds 48 bytes each."""
    assert roomy.process is not None
    layer = _layer(roomy)
    before = rss_bytes(roomy.process.pid)
    socks = [socket.create_connection((HOST, roomy.port), timeout=30) for _ in range(8)]
    try:
        for sock in socks:
            sock.sendall(_npy_head(layer, 64 * MIB) + b"\x93NUMPY" + b"\0" * 42)
        time.sleep(1.0)  # let the server read what there is (it would allocate now)
        held = rss_bytes(roomy.process.pid) - before
    finally:
        for sock in socks:
            sock.close()
    print(f"8 x 64 MiB announced, 48 bytes sent: server RSS +{held / MIB:.1f} MiB")
    assert held < 16 * MIB, f"{held / MIB:.1f} MiB held for 8 x 48 bytes"


def test_a_large_body_costs_about_its_size(roomy: Server) -> None:
    """128 MiB of .npy is read into one buffer, grown as it arrives, and answered in place."""
    assert roomy.process is not None
    layer = _layer(roomy)
    x = np.ones((1, 64, 64, 8192), np.float32)  # 128 MiB
    body = _npy(x)
    before = rss_bytes(roomy.process.pid)
    with (
        rss_peak(roomy.process.pid) as watch,
        socket.create_connection((HOST, roomy.port), timeout=120) as sock,
    ):
        sock.sendall(_npy_head(layer, len(body)) + body)
        answer = bytearray()  # a large answer: bytes += bytes would copy it 2000 times
        while (end := answer.find(b"\r\n\r\n")) < 0 or len(answer) < end + 4 + len(body):
            chunk = sock.recv(1 << 20)
            assert chunk, bytes(answer[:300])
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), bytes(answer[:300])
    grown = watch.peak - before
    print(f"128 MiB .npy: server RSS {before / MIB:.0f} MiB, peak +{grown / MIB:.1f} MiB")
    assert grown < 1.1 * len(body), f"peak +{grown / MIB:.1f} MiB for {len(body) / MIB:.0f} MiB"


def test_unfinished_bodies_share_one_budget(budgeted: Server) -> None:
    layer = _layer(budgeted)
    first = socket.create_connection((HOST, budgeted.port), timeout=30)
    try:
        first.sendall(_npy_head(layer, 6 * MIB) + b"\0" * (3 * MIB))  # 3 of 4 MiB held
        time.sleep(0.5)
        # 2 MiB alone would fit; with the first body's 3 MiB, they do not.
        refused = exchange(budgeted.port, _npy_head(layer, 6 * MIB), [b"\0" * (2 * MIB)])
    finally:
        first.close()
    assert refused.status == 503, refused.body[:300]
    assert refused.json()["code"] == "server_busy"
    assert refused.headers["retry-after"] == str(TIMEOUT_SECONDS)

    # The first client left: its 3 MiB are free again, and a 3 MiB body (sent in pieces) fits.
    x = np.ones((1, 16, 16, 3072), np.float32)
    body = _npy(x)
    pieces = [body[i : i + 256 * 1024] for i in range(0, len(body), 256 * 1024)]
    for _attempt in range(50):
        answer = exchange(budgeted.port, _npy_head(layer, len(body)), pieces, pause=0.001)
        if answer.status != 503:
            break
        time.sleep(0.1)  # the server has not yet seen the first client go
    assert answer.status == 200, answer.body[:300]

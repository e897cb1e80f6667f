"""Request heads: one too large gets 431 ``header_too_large`` and costs no more than the limit;
one that stalls gets 408 ``head_timeout`` (or, with nothing sent at all, a close) no later than
the body timeout. Raw sockets: no client library sends a 32 MiB header or stops mid-header."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from harness.process import rss_bytes
from tests.conftest import Server, serving
from tests.hostile.wire import HOST, exchange, rss_peak

TIMEOUT_SECONDS = 2.0
HEAD_LIMIT = 16 * 1024
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # The head timeout (10 s by default) must give way to a shorter body timeout.
    yield from serving(
        tmp_path_factory,
        "heads",
        body_timeout_seconds=TIMEOUT_SECONDS,
        max_head_bytes=HEAD_LIMIT,
    )


def _head(*lines: str) -> bytes:
    return ("\r\n".join(["GET /healthz HTTP/1.1", "Host: x", *lines]) + "\r\n\r\n").encode()


def _closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


@pytest.mark.parametrize("size", [HEAD_LIMIT, 32 * MIB], ids=["just-over", "32MiB"])
def test_a_header_over_the_limit_gets_431(guarded: Server, size: int) -> None:
    assert guarded.process is not None
    big = _head(f"X-Big: {'a' * size}")
    before = rss_bytes(guarded.process.pid)
    with rss_peak(guarded.process.pid) as watch:
        answer = exchange(guarded.port, big)
    assert answer.status == 431, answer.body[:200]
    assert answer.json()["code"] == "header_too_large"
    assert answer.headers["connection"] == "close"
    # Refused at the first read past the limit: the server never held the 32 MiB.
    assert watch.peak - before < 8 * MIB, (before, watch.peak)
    assert httpx.get(f"{guarded.url}/healthz").status_code == 200


def test_many_headers_over_the_limit_get_431(guarded: Server) -> None:
    answer = exchange(guarded.port, _head(*(f"X-N{i}: {'b' * 100}" for i in range(500))))
    assert (answer.status, answer.json()["code"]) == (431, "header_too_large")


def test_a_head_under_the_limit_is_served_again_and_again(guarded: Server) -> None:
    """The count starts again with each head of a keep-alive connection."""
    near = _head(f"X-Near: {'c' * (HEAD_LIMIT - 200)}")
    with socket.create_connection((HOST, guarded.port), timeout=30) as sock:
        for _ in range(4):  # four near-limit heads add up to far more than the limit
            sock.sendall(near)
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_pipelined_requests_are_all_answered(guarded: Server) -> None:
    with socket.create_connection((HOST, guarded.port), timeout=30) as sock:
        sock.sendall(_head() * 50)
        answer = b""
        while answer.count(b'{"status":"ok"}') < 50:
            chunk = sock.recv(65536)
            assert chunk, answer[-300:]
            answer += chunk
    assert answer.count(b"HTTP/1.1 200 OK") == 50


def test_stalled_heads_get_408_within_the_body_timeout(guarded: Server) -> None:
    socks = [socket.create_connection((HOST, guarded.port), timeout=30) for _ in range(20)]
    try:
        started = time.monotonic()
        for sock in socks:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow-N: ")
        answers = [_closed(sock) for sock in socks]
        waited = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"code":"head_timeout"' in answer
    assert waited < TIMEOUT_SECONDS + 5  # all closed by the server, none left hanging


def test_a_head_trickled_byte_by_byte_is_cut_off(guarded: Server) -> None:
    """The head timeout bounds the whole head, not the pause between its bytes."""
    with socket.create_connection((HOST, guarded.port), timeout=30) as sock:
        started = time.monotonic()
        sent = 0
        try:
            while time.monotonic() - started < 4 * TIMEOUT_SECONDS:
                sock.sendall(b"X-Drip: a\r\n" if sent else b"GET /healthz HTTP/1.1\r\n")
                sent += 1
                time.sleep(TIMEOUT_SECONDS / 8)
        except OSError:
            pass  # the server answered and closed
        answer = _closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 4 * TIMEOUT_SECONDS


def test_a_connection_that_sends_nothing_is_closed(guarded: Server) -> None:
    with socket.create_connection((HOST, guarded.port), timeout=30) as sock:
        started = time.monotonic()
        assert _closed(sock) == b""  # nothing was asked, so nothing is answered
    assert time.monotonic() - started < TIMEOUT_SECONDS + 5

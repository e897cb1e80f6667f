"""A stalled request body gets 408 body_timeout; a slow but steady one is still read."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Server, serving
from tests.hostile.wire import http_request, read_answer

TIMEOUT_SECONDS = 1.0


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(tmp_path_factory, "timeout", body_timeout_seconds=TIMEOUT_SECONDS)


@pytest.mark.parametrize(
    ("path", "content_type", "v2"),
    [("/apply", "application/json", False), ("/v2/models/any/infer", "application/json", True)],
)
def test_a_stalled_body_gets_408(impatient: Server, path: str, content_type: str, v2: bool) -> None:
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=30) as sock:
        sock.sendall(
            http_request("POST", path, {"Content-Type": content_type}, content_length=1000)
            + b'{"layer": '
        )
        started = time.monotonic()
        answer = read_answer(sock)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert (b'"error"' if v2 else b'"code":"body_timeout"') in answer
    assert waited < 20  # answered, not hung until the client gave up
    assert httpx.get(f"{impatient.url}/healthz").status_code == 200


def test_a_slow_but_steady_body_is_read(impatient: Server) -> None:
    body = b'{"spec": {"rate": 0.5}, "training": false, "input": [[[[1.0, 2.0]]]]}'
    with socket.create_connection(("127.0.0.1", impatient.port), timeout=30) as sock:
        sock.sendall(
            http_request(
                "POST", "/apply", {"Content-Type": "application/json"}, content_length=len(body)
            )
        )
        for start in range(0, len(body), 20):  # each piece well inside the timeout
            sock.sendall(body[start : start + 20])
            time.sleep(TIMEOUT_SECONDS / 4)
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b'"output":[[[[1.0,2.0]]]]' in answer

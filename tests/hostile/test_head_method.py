"""HEAD wherever GET is served (RFC 9110 section 9.3.2): the same status and headers, no body.
Load balancers probe with it."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import Server
from tests.hostile.wire import HOST, http_request

ROOT = Path(__file__).resolve().parents[2]
#: What differs between any two answers, HEAD or not.
_PER_ANSWER = {"date", "x-request-id"}
#: Served, but not in the contract.
_UNLISTED = ["/metrics", "/openapi.json", "/docs", "/layers/no-such-layer", "/v2/models/nobody"]


def _get_paths() -> list[str]:
    spec = yaml.safe_load((ROOT / "openapi.yaml").read_text(encoding="utf-8"))
    return [path for path, operations in spec["paths"].items() if "get" in operations]


def _fill(path: str, layer: str) -> str:
    return path.replace("{ref}", layer).replace("{name}", layer).replace("{version}", "1")


@pytest.mark.parametrize("template", _get_paths() + _UNLISTED)
def test_head_answers_as_get_does_without_a_body(
    client: httpx.Client, layer: str, template: str
) -> None:
    path = _fill(template, layer)
    got = client.get(path)
    head = client.head(path)
    assert head.status_code == got.status_code, (path, got.text[:200])
    assert head.content == b""
    varying = _PER_ANSWER | ({"content-length"} if template == "/metrics" else set())
    expected = {k: v for k, v in got.headers.items() if k not in varying}
    assert {k: v for k, v in head.headers.items() if k not in varying} == expected


def test_head_where_only_post_is_served_is_405(client: httpx.Client) -> None:
    head = client.head("/apply")
    assert head.status_code == 405
    assert head.headers["allow"] == "POST"
    assert head.content == b""


def test_no_body_bytes_follow_a_head_answer(server: Server, layer: str) -> None:
    """On one keep-alive connection, the answer after a HEAD's starts where the HEAD's ended."""
    with socket.create_connection((HOST, server.port), timeout=30) as sock:
        sock.sendall(http_request("HEAD", f"/layers/{layer}") + http_request("GET", "/healthz"))
        answer = b""
        while not answer.endswith(b'{"status":"ok"}'):
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b"content-length: " in first.lower()  # what the GET would carry
    assert rest.startswith(b"HTTP/1.1 200"), rest[:300]

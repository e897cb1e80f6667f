"""What only a raw socket can send: slow bodies, lying lengths, bodies far over the limit.

A server of its own, so that its memory can be watched: a refused body must not be buffered.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from harness.process import rss_bytes
from tests.api.helpers import create
from tests.conftest import Server, client_of, serving
from tests.hostile.conftest import assert_serves
from tests.hostile.wire import RawResponse, chunk, exchange, http_request, rss_peak

LIMIT = 8 * 1024 * 1024
MiB = 1024 * 1024
GiB = 1024 * MiB
#: A generous "no hang" bound: every answer here comes in milliseconds when the server is right.
PROMPT = 10.0


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(tmp_path_factory, "transport", max_body_bytes=LIMIT)


@pytest.fixture
def web(limited: Server) -> Iterator[httpx.Client]:
    yield from client_of(limited)


@pytest.fixture
def layer(web: httpx.Client) -> str:
    name: str = create(web, rate=0.5, seed=7)["name"]
    return name


def assert_413(response: RawResponse, media_type: str = "application/problem+json") -> None:
    assert response.status == 413, response
    assert response.headers["content-type"] == media_type
    if media_type == "application/problem+json":
        assert response.json()["code"] == "body_too_large"
    else:
        assert "exceeds the limit" in response.json()["error"]
    assert response.seconds < PROMPT


def npy_head(layer: str, **framing: int | bool) -> bytes:
    return http_request(
        "POST",
        f"/apply?layer={layer}",
        {"Content-Type": "application/x-npy"},
        **framing,  # type: ignore[arg-type]
    )


def test_a_body_over_the_limit_sent_slowly_without_a_length_is_cut_off(
    limited: Server, web: httpx.Client, layer: str
) -> None:
    # 64 KiB every 5 ms: the server counts as it reads and answers at the limit, not at the end.
    pieces = (chunk(bytes(64 * 1024)) for _ in range(4 * LIMIT // (64 * 1024)))
    response = exchange(limited.port, npy_head(layer, chunked=True), pieces, pause=0.005)
    assert_413(response)
    assert_serves(web, layer)


def test_an_announced_body_over_the_limit_is_refused_before_a_byte_is_read(
    limited: Server, web: httpx.Client, layer: str
) -> None:
    pieces = (bytes(64 * 1024) for _ in range(64))
    response = exchange(limited.port, npy_head(layer, content_length=2 * GiB), pieces, pause=0.01)
    assert_413(response)
    assert response.headers["connection"] == "close"
    assert_serves(web, layer)


def test_a_length_that_understates_the_body_only_gets_what_it_announced(
    limited: Server, web: httpx.Client, layer: str
) -> None:
    # 12 bytes announced, then 2x the limit: the request is those 12 bytes (malformed .npy:
    # 400), and what follows is not HTTP, which the server refuses without reading it all.
    head = npy_head(layer, content_length=12)
    rest = [b"\x93NUMPY\x01\x00\x00\x00XX", *(bytes(MiB) for _ in range(2 * LIMIT // MiB))]
    response = exchange(limited.port, head, rest)
    assert response.status in (400, 413), response  # our 400, or uvicorn's for the garbage
    assert response.seconds < PROMPT
    assert_serves(web, layer)


def test_a_length_that_overstates_the_body_then_hangs_up_wastes_nothing(
    limited: Server, web: httpx.Client, layer: str
) -> None:
    with pytest.raises(ConnectionError):  # the client left: nobody to answer
        exchange(
            limited.port,
            npy_head(layer, content_length=LIMIT),
            [b"\x93NUMPY"],
            timeout=PROMPT,
            half_close=True,
        )
    assert_serves(web, layer)


@pytest.mark.parametrize(
    "length",
    ["-1", "abc", "1e3", "99999999999999999999999999999", "10, 12", "0x10"],
)
def test_malformed_content_lengths_are_400(
    limited: Server, web: httpx.Client, layer: str, length: str
) -> None:
    head = http_request("POST", "/layers", {"Content-Type": "application/json"})
    head = head[:-2] + f"Content-Length: {length}\r\n\r\n".encode()
    response = exchange(limited.port, head, [b'{"rate": 0.5}'])
    assert response.status == 400 and response.seconds < PROMPT
    assert_serves(web, layer)


def test_a_v2_body_over_the_limit_gets_a_v2_error(
    limited: Server, web: httpx.Client, layer: str
) -> None:
    head = http_request("POST", f"/v2/models/{layer}/infer", content_length=2 * GiB)
    assert_413(exchange(limited.port, head, [b"{"]), "application/json")
    head = http_request("POST", f"/v2/models/{layer}/infer", chunked=True)
    pieces = (chunk(bytes(MiB)) for _ in range(2 * LIMIT // MiB))
    assert_413(exchange(limited.port, head, pieces), "application/json")
    assert_serves(web, layer)


# -- the limit under load, with the server's memory watched ---------------------------------


def test_concurrent_2GiB_bodies_are_refused_fast_and_never_buffered(
    limited: Server, web: httpx.Client, layer: str
) -> None:
    """16 clients at once announce 2 GiB each (32 GiB in all) and trickle: each gets 413
    promptly and the server's resident memory does not grow (it reads none of it). Then 8
    stream chunked bodies without a length, up to 4x the limit each: it grows by at most what
    they may hold before the count cuts them off, far below what they sent."""
    assert limited.process is not None
    pid = limited.process.pid
    assert_serves(web, layer)  # warm: every code path of a normal request is loaded

    def announced(_: int) -> RawResponse:
        pieces = (bytes(64 * 1024) for _ in range(32))
        return exchange(limited.port, npy_head(layer, content_length=2 * GiB), pieces, pause=0.02)

    def streamed(_: int) -> RawResponse:
        pieces = (chunk(bytes(MiB)) for _ in range(4 * LIMIT // MiB))
        return exchange(limited.port, npy_head(layer, chunked=True), pieces)

    before = rss_bytes(pid)
    with rss_peak(pid) as watch, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(announced, range(16)))
    for response in answers:
        assert_413(response)
    growth = watch.peak - before
    assert growth < 16 * MiB, f"RSS grew by {growth / MiB:.0f} MiB for bodies never read"

    before = rss_bytes(pid)
    with rss_peak(pid) as watch, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(streamed, range(8)))
    for response in answers:
        assert_413(response)
    growth = watch.peak - before
    sent = 8 * 4 * LIMIT
    assert growth < 8 * LIMIT + 32 * MiB < sent, f"RSS grew by {growth / MiB:.0f} MiB"
    assert_serves(web, layer)

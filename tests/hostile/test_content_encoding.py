"""Content-Encoding on every route that takes a body: gzip and deflate are inflated (never past
the body limit), anything else gets 415 ``unsupported_content_encoding``; none is ignored."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from tests.api.helpers import npy, unique
from tests.conftest import Server
from tests.hostile.conftest import assert_serves
from tests.hostile.wire import chunk, exchange, http_request

LIMIT = 8 * 1024 * 1024  # the session server's SPATIAL_DROPOUT_MAX_BODY_BYTES
X = np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3)

Body = Callable[[str], tuple[str, str, bytes]]  # layer -> (path, content type, body)


def _apply_json(layer: str) -> tuple[str, str, bytes]:
    body = {"layer": layer, "training": True, "seed": 7, "input": X.tolist()}
    return "/apply", "application/json", orjson.dumps(body)


def _apply_npy(layer: str) -> tuple[str, str, bytes]:
    return f"/apply?layer={layer}&training=true&seed=7", "application/x-npy", npy(X)


def _create(_layer: str) -> tuple[str, str, bytes]:
    return "/layers", "application/json", orjson.dumps({"rate": 0.25, "name": unique()})


def _infer(layer: str) -> tuple[str, str, bytes]:
    tensor = {
        "name": "input",
        "shape": [1, 2, 2, 3],
        "datatype": "FP32",
        "data": X.ravel().tolist(),
    }
    body = {"inputs": [tensor], "parameters": {"seed": 7, "training": True}}
    return f"/v2/models/{layer}/infer", "application/json", orjson.dumps(body)


def _infer_version(layer: str) -> tuple[str, str, bytes]:
    _, media, body = _infer(layer)
    return f"/v2/models/{layer}/versions/1/infer", media, body


ROUTES: dict[str, Body] = {
    "apply-json": _apply_json,
    "apply-npy": _apply_npy,
    "create": _create,
    "infer": _infer,
    "infer-version": _infer_version,
}


def _compress(encoding: str, data: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.compress(data)
    return zlib.compress(data)  # HTTP's "deflate" is the zlib format


def _bomb(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    piece = bytes(1024 * 1024)
    return b"".join(packer.compress(piece) for _ in range(size // len(piece))) + packer.flush()


def _comparable(response: httpx.Response) -> Any:
    """The part of an answer that does not change from one call to the next."""
    if response.headers["content-type"] == "application/x-npy":
        return response.content
    body = response.json()
    if isinstance(body, dict):
        for varying in ("id", "name", "created_at", "model_name"):
            body.pop(varying, None)
    return body


def _post(
    client: httpx.Client, route: Body, layer: str, encoding: str | None, body: bytes | None = None
) -> httpx.Response:
    path, media, plain = route(layer)
    headers = {"content-type": media}
    if encoding is not None:
        headers["content-encoding"] = encoding
    return client.post(path, content=plain if body is None else body, headers=headers)


def _code(response: httpx.Response) -> str:
    """The stable code, or under /v2 (whose errors carry only text) the status alone."""
    body = response.json()
    return str(body.get("code", response.status_code))


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "GZIP"])
@pytest.mark.parametrize("route", ROUTES.values(), ids=ROUTES.keys())
def test_compressed_bodies_are_answered_as_plain_ones(
    client: httpx.Client, layer: str, route: Body, encoding: str
) -> None:
    plain = _post(client, route, layer, None)
    assert plain.status_code in (200, 201), plain.text
    packed = _compress("deflate" if encoding == "deflate" else "gzip", route(layer)[2])
    compressed = _post(client, route, layer, encoding, packed)
    assert compressed.status_code == plain.status_code, compressed.text
    assert _comparable(compressed) == _comparable(plain)


@pytest.mark.parametrize("encoding", ["br", "compress", "zstd", "gzip, br", "gzip, gzip"])
@pytest.mark.parametrize("route", ROUTES.values(), ids=ROUTES.keys())
def test_other_encodings_get_415(
    client: httpx.Client, layer: str, route: Body, encoding: str
) -> None:
    response = _post(client, route, layer, encoding)
    assert response.status_code == 415, response.text
    if not route(layer)[0].startswith("/v2"):
        assert _code(response) == "unsupported_content_encoding"
    assert_serves(client, layer)


@pytest.mark.parametrize("route", ROUTES.values(), ids=ROUTES.keys())
def test_a_bomb_gets_413(client: httpx.Client, layer: str, route: Body) -> None:
    response = _post(client, route, layer, "gzip", _bomb(2 * LIMIT))
    assert response.status_code == 413, response.text
    if not route(layer)[0].startswith("/v2"):
        assert _code(response) == "body_too_large"
    assert_serves(client, layer)


@pytest.mark.parametrize(
    "body", [b"not gzip at all", gzip.compress(b"{}" * 100)[:-8], gzip.compress(b"{}") + b"junk"]
)
@pytest.mark.parametrize("route", ROUTES.values(), ids=ROUTES.keys())
def test_a_corrupt_compressed_body_gets_400(
    client: httpx.Client, layer: str, route: Body, body: bytes
) -> None:
    response = _post(client, route, layer, "gzip", body)
    assert response.status_code == 400, response.text
    if not route(layer)[0].startswith("/v2"):
        assert _code(response) == "invalid_compressed_body"


def test_a_compressed_body_in_many_chunks_is_inflated_as_it_arrives(
    server: Server, layer: str
) -> None:
    """Raw chunked framing, 64-byte pieces: the inflater carries its state across them."""
    path, media, plain = _apply_json(layer)
    packed = gzip.compress(plain)
    pieces = [chunk(packed[i : i + 64]) for i in range(0, len(packed), 64)] + [b"0\r\n\r\n"]
    head = http_request(
        "POST", path, {"Content-Type": media, "Content-Encoding": "gzip"}, chunked=True
    )
    answer = exchange(server.port, head, pieces, pause=0.002)
    assert answer.status == 200, answer.body[:300]
    expected = X * np.array([2, 0, 2], dtype=np.float32)  # seed 7, as in assert_serves
    np.testing.assert_array_equal(np.array(answer.json()["output"], np.float32), expected)


def test_a_bomb_in_chunks_is_cut_off_at_the_limit(server: Server, layer: str) -> None:
    bomb = _bomb(4 * LIMIT)
    pieces = [chunk(bomb[i : i + 4096]) for i in range(0, len(bomb), 4096)] + [b"0\r\n\r\n"]
    head = http_request(
        "POST",
        "/layers",
        {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        chunked=True,
    )
    answer = exchange(server.port, head, pieces)
    assert (answer.status, answer.json()["code"]) == (413, "body_too_large")


def test_two_encoding_lines_are_one_list(server: Server, layer: str) -> None:
    """``br`` on a line of its own is not lost behind a ``gzip`` line."""
    path, media, plain = _apply_json(layer)
    packed = gzip.compress(plain)
    head = http_request(
        "POST",
        path,
        {"Content-Type": media, "Content-Encoding": "br", "content-encoding": "gzip"},
        content_length=len(packed),
    )
    answer = exchange(server.port, head, [packed])
    assert (answer.status, answer.json()["code"]) == (415, "unsupported_content_encoding")

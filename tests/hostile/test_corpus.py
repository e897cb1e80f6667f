"""A corpus of hostile requests, each with the exact answer it must get from a real server.

None may be a 500, and after each the server must still answer a normal request correctly.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zlib
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import orjson
import pytest

from tests.api.helpers import assert_problem, create, unique
from tests.hostile.conftest import assert_serves

NPY = {"content-type": "application/x-npy"}
LIMIT = 8 * 1024 * 1024  # the session server's SPATIAL_DROPOUT_MAX_BODY_BYTES


def save(array: np.ndarray[Any, Any], **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


def npy(header: str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy body with a hand-written header."""
    raw = header.encode("latin1")
    length = struct.pack("<H" if version == (1, 0) else "<I", len(raw))
    return b"\x93NUMPY" + bytes(version) + length + raw + data


def header(shape: str, descr: str = "<f4", fortran: str = "False") -> str:
    return f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}\n"


class Pickled:
    """Unpickling it would call ``exit``: proof enough if the server ever loaded it."""

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return (exit, (3,))


# -- .npy bodies ----------------------------------------------------------------------------

NPY_REFUSALS = [
    ("empty", b"", 400, "invalid_npy"),
    ("truncated-magic", b"\x93NUM", 400, "invalid_npy"),
    ("truncated-header", b"\x93NUMPY\x01\x00\x40\x00{'descr'", 400, "invalid_npy"),
    ("header-claims-4GiB", b"\x93NUMPY\x02\x00\xff\xff\xff\xff", 400, "invalid_npy"),
    (
        "header-70KB",
        npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}" + " " * 70_000, b"", (2, 0)),
        400,
        "invalid_npy",
    ),
    ("header-code", npy("{'descr': __import__('os').system('true')}"), 400, "invalid_npy"),
    ("header-deep-parens", npy("(" * 50_000), 400, "invalid_npy"),
    ("object-dtype", npy(header("(1, 1, 1, 2)", "|O"), bytes(16)), 422, "unsupported_dtype"),
    (
        "pickle",
        save(np.array([Pickled()], dtype=object), allow_pickle=True),
        422,
        "unsupported_dtype",
    ),
    (
        "structured-dtype",
        npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1, 1, 1, 1)}", bytes(4)),
        422,
        "unsupported_dtype",
    ),
    ("int-dtype", save(np.zeros((1, 1, 1, 2), np.int32)), 422, "unsupported_dtype"),
    ("claims-more-data", npy(header("(1, 2, 2, 3)"), bytes(47)), 400, "invalid_npy"),
    ("trailing-bytes", npy(header("(1, 2, 2, 3)"), bytes(49)), 400, "invalid_npy"),
    ("negative-dim", npy(header("(1, -2, 2, 3)")), 400, "invalid_npy"),
    (
        "product-overflows-int64",
        npy(header(f"({2**32}, {2**32}, {2**32}, 1)")),
        413,
        "tensor_too_large",
    ),
    (
        "zero-size-huge-dims",
        npy(header(f"({2**40}, {2**40}, {2**40}, 0)")),
        413,
        "tensor_too_large",
    ),
    ("rank-33", npy(header("(" + "1, " * 33 + ")")), 422, "invalid_shape"),
    ("rank-3", save(np.zeros((1, 2, 3), np.float32)), 422, "rank_mismatch"),
]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [case[1:] for case in NPY_REFUSALS],
    ids=[case[0] for case in NPY_REFUSALS],
)
def test_hostile_npy_bodies(
    client: httpx.Client, layer: str, body: bytes, status: int, code: str
) -> None:
    response = client.post("/apply", content=body, headers=NPY, params={"layer": layer})
    assert_problem(response, status, code)
    assert_serves(client, layer)


@pytest.mark.parametrize(
    "array",
    [
        np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)),
        np.arange(24, dtype=">f4").reshape(2, 3, 2, 2),
        np.asfortranarray(np.arange(24, dtype=">f8").reshape(2, 3, 2, 2)),
        np.zeros((0, 2, 2, 3), np.float32),
        np.zeros((2, 0, 0, 3), np.float16),
    ],
    ids=["fortran", "big-endian", "fortran-big-endian", "zero-batch", "zero-spatial"],
)
def test_unusual_but_valid_npy_is_answered_exactly(
    client: httpx.Client, layer: str, array: np.ndarray[Any, Any]
) -> None:
    response = client.post("/apply", content=save(array), headers=NPY, params={"layer": layer})
    assert response.status_code == 200, response.text
    out = np.load(io.BytesIO(response.content))
    assert out.flags.c_contiguous and out.dtype == array.dtype.newbyteorder("<")
    np.testing.assert_array_equal(out, array)  # inference mode: the input, bit for bit
    assert_serves(client, layer)


# -- JSON bodies ----------------------------------------------------------------------------

DEEP = 100_000
JSON_REFUSALS: list[tuple[str, bytes, int, str]] = [
    (
        "nested-100k",
        b'{"layer": "L", "input": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        400,
        "invalid_json",
    ),
    ("body-nested-100k", b"[" * DEEP + b"]" * DEEP, 400, "invalid_json"),
    (
        "nested-40",
        b'{"layer": "L", "input": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}",
        422,
        "invalid_shape",
    ),
    ("above-float32", b'{"layer": "L", "input": [[[[1e39]]]]}', 422, "value_out_of_range"),
    (
        "above-float16",
        b'{"layer": "L", "dtype": "float16", "input": [[[[65520.0]]]]}',
        422,
        "value_out_of_range",
    ),
    ("above-float64", b'{"layer": "L", "input": [[[[1e400]]]]}', 400, "invalid_json"),
    ("huge-integer", b'{"layer": "L", "input": [[[[' + b"9" * 400 + b"]]]]}", 400, "invalid_json"),
    ("NaN", b'{"layer": "L", "input": [[[[NaN]]]]}', 400, "invalid_json"),
    ("Infinity", b'{"layer": "L", "input": [[[[Infinity]]]]}', 400, "invalid_json"),
    ("minus-Infinity", b'{"layer": "L", "input": [[[[-Infinity]]]]}', 400, "invalid_json"),
    ("nan-string", b'{"layer": "L", "input": [[[["nan"]]]]}', 422, "validation_error"),
    ("null-leaf", b'{"layer": "L", "input": [[[[null]]]]}', 422, "validation_error"),
    ("bool-leaf", b'{"layer": "L", "input": [[[[true]]]]}', 422, "validation_error"),
    ("ragged", b'{"layer": "L", "input": [[[[1, 2], [3]]]]}', 422, "ragged_tensor"),
    (
        "flat-product-overflows-int64",
        b'{"layer": "L", "input": {"shape": [4294967296, 4294967296, 4294967296, 1], "data": []}}',
        413,
        "tensor_too_large",
    ),
    (
        "flat-zero-size-huge-dims",  # numpy cannot even represent this empty shape
        b'{"layer": "L", "training": true, '
        b'"input": {"shape": [4294967296, 4294967296, 4294967296, 0], "data": []}}',
        413,
        "tensor_too_large",
    ),
    (
        "flat-shape-disagrees",
        b'{"layer": "L", "input": {"shape": [1, 1, 1, 3], "data": [1, 2]}}',
        422,
        "shape_mismatch",
    ),
    ("not-utf8", b'{"layer": "L", "input": [[[[1]]]], "x": "\xff\xfe"}', 400, "invalid_json"),
    ("lone-surrogate", b'{"layer": "\\ud800", "input": [[[[1]]]]}', 400, "invalid_json"),
    ("duplicate-bom", b'\xef\xbb\xbf{"layer": "L", "input": [[[[1]]]]}', 400, "invalid_json"),
    (
        "seed-2**64",
        b'{"layer": "L", "seed": 18446744073709551616, "input": [[[[1]]]]}',
        422,
        "validation_error",
    ),
    ("seed-negative", b'{"layer": "L", "seed": -1, "input": [[[[1]]]]}', 422, "validation_error"),
    (
        "unknown-layer-../",
        b'{"layer": "../../etc/passwd", "input": [[[[1]]]]}',
        404,
        "layer_not_found",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [case[1:] for case in JSON_REFUSALS],
    ids=[case[0] for case in JSON_REFUSALS],
)
def test_hostile_json_bodies(
    client: httpx.Client, layer: str, body: bytes, status: int, code: str
) -> None:
    body = body.replace(b'"L"', orjson.dumps(layer))
    response = client.post("/apply", content=body, headers={"content-type": "application/json"})
    assert_problem(response, status, code)
    assert_serves(client, layer)


def test_the_largest_float32_is_accepted_and_the_next_is_refused(
    client: httpx.Client, layer: str
) -> None:
    largest = float(np.finfo(np.float32).max)
    response = client.post("/apply", json={"layer": layer, "input": [[[[largest, -largest]]]]})
    assert response.status_code == 200
    out = np.array(response.json()["output"], np.float32).ravel()
    assert out.tolist() == [largest, -largest]
    # float64 values that round to float32's max are accepted; max + half an ulp (2**103)
    # rounds to even, which is infinity, and is refused.
    below = largest + 2.0**102
    response = client.post("/apply", json={"layer": layer, "input": [[[[below]]]]})
    assert np.float32(response.json()["output"][0][0][0][0]) == np.float32(largest)
    response = client.post("/apply", json={"layer": layer, "input": [[[[largest + 2.0**103]]]]})
    assert_problem(response, 422, "value_out_of_range")


# -- names ----------------------------------------------------------------------------------

NAME_REFUSALS = [
    "a/b",
    "a\\b",
    "/",
    "..",
    ".",
    "a\x00b",
    "a\nb",
    "a\rb",
    "\x1b[31mred",
    "a\u202eb",  # right-to-left override: a format character
    "a\u200bb",  # zero-width space
    " padded",
    "",
    "x" * 129,
    "0123456789abcdef0123456789abcdef",  # the form of an id
]


@pytest.mark.parametrize("name", NAME_REFUSALS, ids=[repr(name)[:20] for name in NAME_REFUSALS])
def test_hostile_names_are_refused(client: httpx.Client, layer: str, name: str) -> None:
    assert_problem(client.post("/layers", json={"name": name, "rate": 0.5}), 422, "invalid_name")
    assert_serves(client, layer)


@pytest.mark.parametrize(
    "name",
    [
        "spatial-ß-Ω-层-🙂",
        "\uff41\uff42\uff43",
        "e\u0301",
        "\u00e9",
        "name with spaces",
        "%2F",
        "?#&=",
        "x" * 128,
    ],
    ids=[
        "mixed",
        "fullwidth",
        "e-combining",
        "e-precomposed",
        "spaces",
        "encoded-slash",
        "query-chars",
        "128",
    ],
)
def test_unusual_names_work_everywhere(client: httpx.Client, name: str) -> None:
    name = f"{name[:100]}{unique('')}"  # unique per run; still unusual
    created = client.post("/layers", json={"name": name, "rate": 0.5, "seed": 7})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == name  # stored as sent: no normalization
    path = quote(name, safe="")
    assert client.get(f"/layers/{path}").json()["id"] == created.json()["id"]
    assert client.get(f"/layers/{path}/keras").json()["config"]["name"] == name
    assert client.get(f"/v2/models/{path}").json()["name"] == name
    x = np.ones((1, 1, 1, 2), np.float32)
    answer = client.post("/apply", content=save(x), headers=NPY, params={"layer": name})
    assert answer.status_code == 200 and answer.headers["x-layer"].isascii()
    assert client.post("/apply", json={"layer": name, "input": x.tolist()}).json()["layer"] == name
    assert client.delete(f"/layers/{path}").status_code == 204


def test_unicode_normalization_forms_are_distinct_names(client: httpx.Client) -> None:
    suffix = unique("")
    composed, decomposed = f"\u00e9{suffix}", f"e\u0301{suffix}"
    assert client.post("/layers", json={"name": composed, "rate": 0.5}).status_code == 201
    assert client.post("/layers", json={"name": decomposed, "rate": 0.5}).status_code == 201
    assert_problem(
        client.post("/layers", json={"name": composed, "rate": 0.5}), 409, "name_conflict"
    )


@pytest.mark.parametrize(
    ("ref", "code"),
    [
        ("..%2F..%2Fetc%2Fpasswd", "not_found"),  # decoded to /layers/../../etc/passwd: no route
        ("%2e%2e", "layer_not_found"),
        ("%00", "layer_not_found"),
        ("%0d%0aX-Injected:%201", "layer_not_found"),
        ("a%5Cb", "layer_not_found"),
        ("%F0%9F%99%82", "layer_not_found"),
        ("%ff%fe", "layer_not_found"),  # not UTF-8 once decoded
    ],
)
def test_hostile_refs_are_not_found(client: httpx.Client, layer: str, ref: str, code: str) -> None:
    response = client.get(f"/layers/{ref}")
    assert_problem(response, 404, code)
    assert "x-injected" not in response.headers
    assert_serves(client, layer)


# -- /v2 ------------------------------------------------------------------------------------


def infer_body(shape: list[int], data: list[float]) -> bytes:
    # The standard library's json: orjson refuses to write integers beyond 64 bits.
    return json.dumps(
        {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}]}
    ).encode()


def bomb(kind: str, size: int) -> bytes:
    """``size`` zero bytes, compressed (in pieces, so building it is quick)."""
    wbits = 16 + zlib.MAX_WBITS if kind == "gzip" else zlib.MAX_WBITS
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    piece = bytes(1024 * 1024)
    return b"".join(packer.compress(piece) for _ in range(size // len(piece))) + packer.flush()


V2_REFUSALS: list[tuple[str, bytes, dict[str, str | bytes], int, str]] = [
    (
        "gzip-bomb-256MiB",
        bomb("gzip", 256 << 20),
        {"content-encoding": "gzip"},
        413,
        "exceeds the limit",
    ),
    (
        "deflate-bomb-256MiB",
        bomb("deflate", 256 << 20),
        {"content-encoding": "deflate"},
        413,
        "exceeds the limit",
    ),
    ("gzip-garbage", b"not gzip at all", {"content-encoding": "gzip"}, 400, "cannot be inflated"),
    ("gzip-header-only", b"\x1f\x8b\x08\x00", {"content-encoding": "gzip"}, 400, "truncated"),
    (
        "gzip-truncated",
        gzip.compress(b"{}" * 1000)[:-12],
        {"content-encoding": "gzip"},
        400,
        "truncated",
    ),
    ("encoding-br", b"{}", {"content-encoding": "br"}, 415, "'br' is not supported"),
    (
        "header-length-huge",
        infer_body([1, 1, 1, 1], [1.0]),
        {"inference-header-content-length": "9" * 400},
        400,
        "but the body has only",
    ),
    (
        "header-length-2**64",
        infer_body([1, 1, 1, 1], [1.0]),
        {"inference-header-content-length": str(2**64)},
        400,
        "but the body has only",
    ),
    (
        "header-length-negative",
        infer_body([1, 1, 1, 1], [1.0]),
        {"inference-header-content-length": "-5"},
        400,
        "non-negative integer",
    ),
    (
        "header-length-unicode-digits",
        infer_body([1, 1, 1, 1], [1.0]),
        {"inference-header-content-length": "\u0661\u0662".encode()},  # Arabic-Indic digits, UTF-8
        400,
        "non-negative integer",
    ),
    ("nested-100k", b"[" * DEEP + b"]" * DEEP, {}, 400, "not valid JSON"),
    (
        "NaN",
        b'{"inputs": [{"name": "i", "shape": [1,1,1,1], "datatype": "FP32", "data": [NaN]}]}',
        {},
        400,
        "not valid JSON",
    ),
    ("above-float32", infer_body([1, 1, 1, 1], [1e39]), {}, 422, "out of range for float32"),
    ("shape-overflows-int64", infer_body([2**32, 2**32, 2**32, 1], []), {}, 413, "elements"),
    (
        "zero-size-huge-dims",
        infer_body([2**32, 2**32, 2**32, 0], []),
        {},
        413,
        "dimension above the limit",
    ),
    ("shape-2**64", infer_body([2**64, 1, 1, 1], []), {}, 400, "inputs.0.shape"),
    (
        "datatype-BYTES",
        orjson.dumps({"inputs": [{"name": "i", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}),
        {},
        422,
        "BYTES",
    ),
    (
        "two-inputs",
        orjson.dumps(
            {
                "inputs": [
                    {"name": name, "shape": [1], "datatype": "FP32", "data": [1.0]}
                    for name in ("a", "b")
                ]
            }
        ),
        {},
        400,
        "exactly one input",
    ),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [case[1:] for case in V2_REFUSALS],
    ids=[case[0] for case in V2_REFUSALS],
)
def test_hostile_v2_bodies(
    client: httpx.Client,
    layer: str,
    body: bytes,
    headers: dict[str, str | bytes],
    status: int,
    fragment: str,
) -> None:
    raw = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in headers.items()}
    response = client.post(f"/v2/models/{layer}/infer", content=body, headers=raw)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert set(answer) == {"error"} and fragment in answer["error"], answer
    assert_serves(client, layer)


def test_a_bomb_within_the_limit_is_inflated_and_served(client: httpx.Client, layer: str) -> None:
    x = np.ones((1, 1, 1, 4096), np.float32)
    body = gzip.compress(infer_body(list(x.shape), x.ravel().tolist()))
    response = client.post(
        f"/v2/models/{layer}/infer", content=body, headers={"content-encoding": "gzip"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == x.ravel().tolist()


def test_npy_body_over_the_limit_is_413(client: httpx.Client, layer: str) -> None:
    body = save(np.zeros((1, 1, 1, LIMIT // 4 + 16), np.float32))
    response = client.post("/apply", content=body, headers=NPY, params={"layer": layer})
    assert_problem(response, 413, "body_too_large")
    assert_serves(client, layer)


def test_create_many_layers_with_unusual_names_leaves_the_listing_intact(
    client: httpx.Client,
) -> None:
    names = [f"{prefix}{unique('')}" for prefix in ("层", "🙂", "ß", "e\u0301")]
    for name in names:
        create(client, name=name)
    seen: set[str] = set()
    cursor = None
    while True:
        page = client.get("/layers", params={"limit": 50, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200
        seen.update(item["name"] for item in page.json()["items"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert set(names) <= seen

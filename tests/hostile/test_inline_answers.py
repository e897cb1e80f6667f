"""Small requests answered in the protocol (service.api.inline) answer as the app does.

The same request is sent two ways. In one write, head and body together, it is offered
inline. As a head, a pause, then the body, it cannot be (the body is not there at the end of
the first read), so the app answers it the ordinary way. Only the date and the request id
may differ between the two answers.
"""

from __future__ import annotations

import re
import socket
import time

import httpx
import numpy as np
import orjson

from service.core import kernel
from service.core.config import DropoutConfig, Kind
from tests.api.helpers import fp32_input, load, npy
from tests.conftest import Server
from tests.hostile.wire import HOST, RawResponse, exchange, http_request

X = np.random.default_rng(3).standard_normal((2, 4, 4, 3)).astype(np.float32)
VARYING = {"date", "x-request-id"}
KEEP_ALIVE_S = 5  # uvicorn's default keep-alive timeout, which serve keeps


def apply_request(query: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = http_request(
        "POST",
        f"/apply?{query}",
        {"Content-Type": "application/x-npy", **(headers or {})},
        content_length=len(body),
    )
    return head + body


def both_ways(port: int, request: bytes) -> tuple[RawResponse, RawResponse]:
    """The answer to ``request`` in one write, and in two (head, then the body 0.2 s later)."""
    head, _, body = request.partition(b"\r\n\r\n")
    whole = exchange(port, request)
    split = exchange(port, head + b"\r\n\r\n", [body], pause=0.2)
    return whole, split


def assert_same(whole: RawResponse, split: RawResponse) -> None:
    assert whole.status == split.status
    assert whole.body == split.body
    kept = {k: v for k, v in whole.headers.items() if k not in VARYING}
    assert kept == {k: v for k, v in split.headers.items() if k not in VARYING}
    assert whole.headers.keys() == split.headers.keys()


def warm(client: httpx.Client, layer: str) -> None:
    """The layer into the process's memory, where the inline path looks for it."""
    response = client.post(
        f"/apply?layer={layer}&seed=1",
        content=npy(X),
        headers={"content-type": "application/x-npy"},
    )
    assert response.status_code == 200, response.text


def test_a_dropout_answered_inline_is_the_apps_answer(
    server: Server, client: httpx.Client, layer: str
) -> None:
    warm(client, layer)
    whole, split = both_ways(
        server.port, apply_request(f"layer={layer}&training=true&seed=9", npy(X))
    )
    assert whole.status == 200
    assert_same(whole, split)
    config = DropoutConfig(kind=Kind.SPATIAL_2D, rate=0.5, name=layer)  # the fixture's layer
    expected = kernel.apply(config, X, training=True, seed=9).output
    np.testing.assert_array_equal(load(whole.body), expected)
    assert whole.headers["x-seed"] == "9" and whole.headers["x-layer"] == layer
    assert re.fullmatch(r"[0-9a-f]{32}", whole.headers["x-request-id"])


def test_failures_answered_inline_are_the_apps_failures(
    server: Server, client: httpx.Client, layer: str
) -> None:
    warm(client, layer)
    cases = {
        "a seed that is no number": apply_request(f"layer={layer}&seed=abc", npy(X)),
        "a body that is no .npy": apply_request(f"layer={layer}", b"not a tensor"),
        "a rank the layer refuses": apply_request(f"layer={layer}", npy(X[0])),
        "an answer the client refuses": apply_request(
            f"layer={layer}", npy(X), {"Accept": "application/json"}
        ),
        "no layer named": apply_request("seed=1", npy(X)),
    }
    for case, request in cases.items():
        whole, split = both_ways(server.port, request)
        assert 400 <= whole.status < 500, (case, whole.status, whole.body)
        assert_same(whole, split)


def test_an_incoming_request_id_is_kept(server: Server, client: httpx.Client, layer: str) -> None:
    warm(client, layer)
    answer = exchange(
        server.port, apply_request(f"layer={layer}", npy(X), {"X-Request-ID": "trace-42"})
    )
    assert answer.status == 200 and answer.headers["x-request-id"] == "trace-42"


def read_answers(sock: socket.socket, count: int) -> list[RawResponse]:
    """``count`` answers in a row from one connection, each by its Content-Length."""
    data, answers = b"", []
    start = time.monotonic()
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            got = sock.recv(65536)
            assert got, f"the server closed after {len(answers)} answers"
            data += got
        head, _, data = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}
        length = int(headers["content-length"])
        while len(data) < length:
            got = sock.recv(65536)
            assert got, "the server closed inside an answer"
            data += got
        body, data = data[:length], data[length:]
        answers.append(
            RawResponse(int(status_line.split()[1]), headers, body, time.monotonic() - start)
        )
    return answers


def test_pipelined_requests_are_answered_in_order(
    server: Server, client: httpx.Client, layer: str
) -> None:
    warm(client, layer)
    slow_first = http_request("GET", f"/layers/{layer}")  # the app's, through a task
    requests = [
        slow_first,
        apply_request(f"layer={layer}&training=true&seed=1", npy(X)),
        apply_request(f"layer={layer}&seed=abc", npy(X)),
        apply_request(f"layer={layer}&training=true&seed=2", npy(X)),
    ]
    with socket.create_connection((HOST, server.port), timeout=30) as sock:
        sock.sendall(b"".join(requests))
        first, one, bad, two = read_answers(sock, 4)
    assert first.status == 200 and first.json()["name"] == layer
    assert (one.status, bad.status, two.status) == (200, 422, 200)
    assert one.headers["x-seed"] == "1" and two.headers["x-seed"] == "2"
    assert one.body != two.body  # two seeds, two masks: each answer is its own request's


def test_inline_answers_keep_the_connection_as_asked(
    server: Server, client: httpx.Client, layer: str
) -> None:
    warm(client, layer)
    request = apply_request(f"layer={layer}", npy(X))
    with socket.create_connection((HOST, server.port), timeout=30) as sock:
        sock.sendall(request)
        read_answers(sock, 1)
        sock.sendall(request)  # kept alive: a second request on the same connection
        read_answers(sock, 1)
    closing = apply_request(f"layer={layer}", npy(X), {"Connection": "close"})
    old = closing.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    for ask in (closing, old):
        with socket.create_connection((HOST, server.port), timeout=30) as sock:
            sock.sendall(ask)
            (answer,) = read_answers(sock, 1)
            assert answer.status == 200 and answer.headers["connection"] == "close"
            sock.settimeout(KEEP_ALIVE_S / 2)  # closed now, not when an idle connection would be
            assert sock.recv(1) == b""


def test_inline_answers_are_counted(server: Server, client: httpx.Client, layer: str) -> None:
    warm(client, layer)

    def served() -> float:
        text = client.get("/metrics").text
        pattern = (
            r"spatial_dropout_http_requests_total"
            r'\{method="POST",route="/apply",status="200"\} (\S+)'
        )
        found = re.search(pattern, text)
        assert found, text[:2000]
        return float(found.group(1))

    before = served()
    for _ in range(5):
        assert exchange(server.port, apply_request(f"layer={layer}", npy(X))).status == 200
    assert served() - before == 5


def infer_request(path: str, body: bytes, header_length: int | None = None) -> bytes:
    headers = {"Content-Type": "application/octet-stream" if header_length else "application/json"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    return http_request("POST", path, headers, content_length=len(body)) + body


def binary_infer(x: np.ndarray, seed: int) -> tuple[bytes, int]:
    """A V2 infer body with the input as raw bytes after the JSON, as tritonclient sends it."""
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
            "parameters": {"training": True, "seed": seed},
        }
    )
    return header + x.tobytes(), len(header)


def test_v2_infer_on_a_layer_in_memory_is_the_apps_answer(
    server: Server, client: httpx.Client, layer: str
) -> None:
    warm(client, layer)
    body, header_length = binary_infer(X, seed=4)
    path = f"/v2/models/{layer}/infer"
    whole, split = both_ways(server.port, infer_request(path, body, header_length))
    assert whole.status == 200, whole.body
    assert_same(whole, split)
    config = DropoutConfig(kind=Kind.SPATIAL_2D, rate=0.5, name=layer)
    expected = kernel.apply(config, X, training=True, seed=4).output
    json_size = int(whole.headers["inference-header-content-length"])
    got = np.frombuffer(whole.body[json_size:], np.float32).reshape(X.shape)
    np.testing.assert_array_equal(got, expected)
    as_json = orjson.dumps({"inputs": [fp32_input(X)], "parameters": {"training": True, "seed": 4}})
    whole, split = both_ways(server.port, infer_request(path, as_json))
    assert whole.status == 200 and whole.json()["parameters"]["seed"] == 4
    assert_same(whole, split)
    failures = {
        "a shape its data does not fill": orjson.dumps(
            {"inputs": [{**fp32_input(X), "shape": [1, 2]}]}
        ),
        "no JSON": b"{not json",
        "a version that is not there": None,
    }
    for case, bad in failures.items():
        target = f"/v2/models/{layer}/versions/9/infer" if bad is None else path
        whole, split = both_ways(server.port, infer_request(target, bad or as_json))
        assert 400 <= whole.status < 500, (case, whole.status, whole.body)
        assert_same(whole, split)


def json_apply(body: object, query: str = "") -> bytes:
    raw = orjson.dumps(body)
    target = f"/apply?{query}" if query else "/apply"
    head = http_request(
        "POST", target, {"Content-Type": "application/json"}, content_length=len(raw)
    )
    return head + raw


def test_json_apply_answered_inline_is_the_apps_answer(
    server: Server, client: httpx.Client, layer: str
) -> None:
    warm(client, layer)
    flat = {"shape": list(X.shape), "dtype": "float32", "data": X.ravel().tolist()}
    requests = {
        "a stored layer, flat": {"layer": layer, "training": True, "seed": 5, "input": flat},
        "a stored layer, nested, its mask": {
            "layer": layer,
            "training": True,
            "seed": 5,
            "return_mask": True,
            "input": X.tolist(),
        },
        "a spec given inline": {
            "spec": {"kind": "spatial_dropout_2d", "rate": 0.5},
            "training": True,
            "seed": 5,
            "input": flat,
        },
    }
    for case, body in requests.items():
        whole, split = both_ways(server.port, json_apply(body))
        assert whole.status == 200, (case, whole.body)
        assert_same(whole, split)
    config = DropoutConfig(kind=Kind.SPATIAL_2D, rate=0.5, name=layer)
    expected = kernel.apply(config, X, training=True, seed=5).output
    answer = exchange(server.port, json_apply(requests["a stored layer, flat"])).json()
    got = np.array(answer["output"]["data"], np.float32).reshape(X.shape)
    np.testing.assert_array_equal(got, expected)
    failures = {
        "both a layer and a spec": json_apply({**requests["a spec given inline"], "layer": layer}),
        "a .npy parameter in the query": json_apply(requests["a stored layer, flat"], "seed=3"),
        "a body that is no JSON": json_apply("x")[:-3] + b"{x}",
        "a tensor of strings": json_apply({"layer": layer, "input": [["a"]]}),
    }
    for case, request in failures.items():
        whole, split = both_ways(server.port, request)
        assert 400 <= whole.status < 500, (case, whole.status, whole.body)
        assert_same(whole, split)

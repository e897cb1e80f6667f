"""POST /apply end to end: JSON and .npy, both modes, seeds, masks and every error code."""

from __future__ import annotations

import io
import socket

import httpx
import ml_dtypes
import numpy as np
import pytest

from service.core import kernel
from service.core.config import DataFormat, DropoutConfig, Kind
from tests.api.helpers import assert_problem, create, load, npy
from tests.conftest import Server

NPY = {"content-type": "application/x-npy"}


def reference(
    x: np.ndarray,
    rate: float,
    seed: int,
    offset: int = 0,
    data_format: str = "channels_last",
    kind: Kind = Kind.SPATIAL_2D,
) -> np.ndarray:
    config = DropoutConfig(kind=kind, rate=rate, data_format=DataFormat(data_format))
    return np.asarray(
        kernel.apply(config, x, training=True, seed=seed, sample_offset=offset).output
    )


def test_flat_json_training_equals_the_kernel_and_answers_in_kind(client: httpx.Client) -> None:
    layer = create(client, rate=0.5, seed=7)
    x = np.arange(1, 2 * 3 * 3 * 4 + 1, dtype=np.float32).reshape(2, 3, 3, 4)
    body = {
        "layer": layer["name"],
        "training": True,
        "return_mask": True,
        "input": {"shape": list(x.shape), "dtype": "float32", "data": x.ravel().tolist()},
    }
    answer = client.post("/apply", json=body).json()
    assert answer["seed"] == 7 and answer["training"] is True
    assert answer["layer"] == layer["name"]
    out = answer["output"]
    assert out["shape"] == [2, 3, 3, 4] and out["dtype"] == "float32"
    got = np.array(out["data"], dtype=np.float32).reshape(x.shape)
    np.testing.assert_array_equal(got, reference(x, 0.5, 7))
    mask = np.array(answer["mask"])
    assert mask.shape == (2, 4)
    np.testing.assert_array_equal(got[:, 0, 0, :] != 0, mask)


def test_nested_json_answers_nested(client: httpx.Client) -> None:
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float64)
    answer = client.post(
        "/apply",
        json={
            "spec": {"kind": "spatial_dropout_1d", "rate": 0.3},
            "training": True,
            "seed": 1,
            "dtype": "float64",
            "input": x.tolist(),
        },
    ).json()
    got = np.array(answer["output"], dtype=np.float64)
    np.testing.assert_array_equal(got, reference(x, 0.3, 1, kind=Kind.SPATIAL_1D))
    assert answer["layer"] is None  # nothing stored, so no generated name
    assert "mask" not in answer


def test_an_inline_spec_answers_with_its_own_name(client: httpx.Client) -> None:
    body = {"spec": {"name": "mine", "rate": 0.5}, "input": [[[[1.0]]]]}
    assert client.post("/apply", json=body).json()["layer"] == "mine"
    assert client.get("/layers/mine").status_code == 404  # and still stores nothing


def test_inference_mode_is_the_identity(client: httpx.Client) -> None:
    layer = create(client, rate=0.9)
    x = np.random.default_rng(1).standard_normal((3, 2, 2, 5)).astype(np.float32)
    answer = client.post("/apply", json={"layer": layer["id"], "input": x.tolist()}).json()
    np.testing.assert_array_equal(np.array(answer["output"], dtype=np.float32), x)
    assert answer["training"] is False


def test_server_draws_a_seed_and_returns_it_for_replay(client: httpx.Client) -> None:
    layer = create(client, rate=0.5)
    x = np.ones((4, 2, 2, 8), dtype=np.float32).tolist()
    first = client.post("/apply", json={"layer": layer["name"], "training": True, "input": x})
    seed = first.json()["seed"]
    assert 0 <= seed < 2**53
    replay = client.post(
        "/apply", json={"layer": layer["name"], "training": True, "seed": seed, "input": x}
    )
    assert replay.json()["output"] == first.json()["output"]


def test_request_seed_beats_layer_seed(client: httpx.Client) -> None:
    layer = create(client, rate=0.5, seed=5)
    x = np.ones((8, 1, 1, 16), dtype=np.float32)
    answer = client.post(
        "/apply", json={"layer": layer["name"], "training": True, "seed": 6, "input": x.tolist()}
    ).json()
    assert answer["seed"] == 6
    np.testing.assert_array_equal(
        np.array(answer["output"], dtype=np.float32), reference(x, 0.5, 6)
    )


def test_npy_round_trip_with_x_seed(client: httpx.Client) -> None:
    layer = create(client, rate=0.25, data_format="channels_first")
    x = np.random.default_rng(2).standard_normal((3, 4, 5, 6)).astype(np.float16)
    response = client.post(
        "/apply",
        content=npy(x),
        headers=NPY,
        params={"layer": layer["name"], "training": "true", "seed": 42, "sample_offset": 3},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npy"
    assert response.headers["x-seed"] == "42"
    out = load(response.content)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, reference(x, 0.25, 42, 3, "channels_first"))


def test_npy_bfloat16_keeps_its_dtype(client: httpx.Client) -> None:
    layer = create(client, rate=0.5)
    x = np.random.default_rng(3).standard_normal((2, 2, 2, 4)).astype(ml_dtypes.bfloat16)
    response = client.post(
        "/apply",
        content=npy(x),
        headers=NPY,
        params={"layer": layer["name"], "training": "true", "seed": 1},
    )
    assert response.status_code == 200, response.text
    answer = io.BytesIO(response.content)
    assert np.lib.format.read_magic(answer) == (1, 0)
    header = np.lib.format.read_array_header_1_0(answer)
    assert header == ((2, 2, 2, 4), False, np.dtype("V2"))  # as np.save writes bfloat16
    assert response.content.find(b"'descr': '<V2'") > 0
    assert len(response.content) - answer.tell() == x.size * 2
    out = np.frombuffer(response.content, ml_dtypes.bfloat16, offset=answer.tell())
    np.testing.assert_array_equal(
        out.view(np.uint16), reference(x, 0.5, 1).reshape(-1).view(np.uint16)
    )


def test_split_batches_with_sample_offset_equal_the_whole(client: httpx.Client) -> None:
    layer = create(client, rate=0.5, seed=99)
    x = np.random.default_rng(4).standard_normal((6, 2, 2, 3)).astype(np.float32)
    whole = load(
        client.post(
            "/apply",
            content=npy(x),
            headers=NPY,
            params={"layer": layer["name"], "training": "true"},
        ).content
    )
    parts = [
        load(
            client.post(
                "/apply",
                content=npy(x[i : i + 2]),
                headers=NPY,
                params={"layer": layer["name"], "training": "true", "sample_offset": i},
            ).content
        )
        for i in range(0, 6, 2)
    ]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def _flat(shape: list[int], data: list[float], dtype: str = "float32") -> dict[str, object]:
    return {"shape": shape, "dtype": dtype, "data": data}


@pytest.mark.parametrize(
    ("patch", "status", "code"),
    [
        ({"input": [[[[1.0, 2.0]], [[3.0]]]]}, 422, "ragged_tensor"),
        ({"input": _flat([1, 1, 1, 3], [1.0, 2.0])}, 422, "shape_mismatch"),
        ({"input": _flat([1, -1, 1, 3], [])}, 422, "invalid_shape"),
        ({"input": _flat([2**40, 2**40, 2**40, 2**40], [])}, 413, "tensor_too_large"),
        ({"input": _flat([1, 1, 1, 2**22], [])}, 413, "tensor_too_large"),
        ({"input": [[1.0, 2.0]]}, 422, "rank_mismatch"),
        ({"input": _flat([1, 1, 1, 2], [1, 2], "int32")}, 422, "unsupported_dtype"),
        ({"dtype": "int32", "input": [[[[1, 2]]]]}, 422, "unsupported_dtype"),  # same code
        ({"dtype": "int32"}, 422, "unsupported_dtype"),
        ({"dtype": 32, "input": [[[[1, 2]]]]}, 422, "validation_error"),  # not a name at all
        ({"input": _flat([1, 1, 1, 1], [1e39])}, 422, "value_out_of_range"),
        ({"input": [[[["1"]]]]}, 422, "validation_error"),
        ({"layer": "no-such-layer"}, 404, "layer_not_found"),
        ({"spec": {"rate": 3}}, 422, "invalid_rate"),
        ({"spec": {"rate": 0.5, "data_format": "nchw"}}, 422, "invalid_data_format"),
        ({"spec": {"rate": 0.5, "weights": [1]}}, 422, "weights_not_supported"),
        ({"spec": None, "layer": None}, 422, "validation_error"),  # neither layer nor spec
        ({"seed": -3}, 422, "validation_error"),
        ({"training": "yes"}, 422, "validation_error"),
    ],
)
def test_bad_apply_requests_get_stable_codes(
    client: httpx.Client, patch: dict[str, object], status: int, code: str
) -> None:
    layer = create(client, rate=0.5)
    body: dict[str, object] = {
        "layer": layer["name"],
        "training": True,
        "input": _flat([1, 1, 1, 2], [1.0, 2.0]),
    }
    body.update(patch)
    if "spec" in patch:
        del body["layer"]
    assert_problem(client.post("/apply", json=body), status, code)


def test_rank_message_is_keras(client: httpx.Client) -> None:
    layer = create(client, rate=0.5)
    problem = assert_problem(
        client.post("/apply", json={"layer": layer["name"], "input": np.zeros((2, 3, 4)).tolist()}),
        422,
        "rank_mismatch",
    )
    assert problem["detail"].endswith(
        "expected ndim=4, found ndim=3. Full shape received: (2, 3, 4)"
    )


def test_batch_size_is_enforced(client: httpx.Client) -> None:
    layer = create(client, rate=0.5, batch_size=2)
    x = np.zeros((3, 1, 1, 2), dtype=np.float32)
    assert_problem(
        client.post("/apply", json={"layer": layer["name"], "input": x.tolist()}),
        422,
        "batch_size_mismatch",
    )


def test_missing_input_and_non_object_bodies(client: httpx.Client) -> None:
    assert_problem(client.post("/apply", json={"layer": "x"}), 422, "validation_error")
    assert_problem(client.post("/apply", json=[1, 2]), 422, "validation_error")
    assert_problem(
        client.post("/apply", content=b"{nope", headers={"content-type": "application/json"}),
        400,
        "invalid_json",
    )


def test_npy_errors(client: httpx.Client) -> None:
    layer = create(client, rate=0.5)
    params = {"layer": layer["name"]}
    assert_problem(
        client.post("/apply", content=b"\x93NUMPY\x01", headers=NPY, params=params),
        400,
        "invalid_npy",
    )
    objects = io.BytesIO()
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert_problem(
        client.post("/apply", content=objects.getvalue(), headers=NPY, params=params),
        422,
        "unsupported_dtype",
    )
    ints = npy(np.zeros((1, 1, 1, 2), dtype=np.int32))
    assert_problem(
        client.post("/apply", content=ints, headers=NPY, params=params), 422, "unsupported_dtype"
    )
    floats = npy(np.zeros((1, 1, 1, 2), dtype=np.float32))
    assert_problem(client.post("/apply", content=floats, headers=NPY), 422, "validation_error")
    assert_problem(
        client.post("/apply", content=floats, headers=NPY, params={"layer": "missing-layer"}),
        404,
        "layer_not_found",
    )


def test_query_parameters_are_refused_on_json(client: httpx.Client) -> None:
    assert_problem(
        client.post("/apply?seed=1", json={"layer": "x", "input": [1.0]}), 422, "validation_error"
    )


def test_media_types(client: httpx.Client) -> None:
    assert_problem(
        client.post("/apply", content=b"1,2", headers={"content-type": "text/csv"}),
        415,
        "unsupported_media_type",
    )
    assert_problem(client.post("/apply", content=b"{}"), 415, "unsupported_media_type")
    assert_problem(
        client.post(
            "/apply", json={"layer": "x", "input": [1.0]}, headers={"accept": "application/x-npy"}
        ),
        406,
        "not_acceptable",
    )


def test_body_over_the_limit_is_413_before_it_is_read(server: Server) -> None:
    # The server was started with an 8 MiB limit; announce 1 GiB and send only a few bytes.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /apply HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-npy\r\nContent-Length: 1073741824\r\n\r\n"
            b"\x93NUMPY"
        )
        answer = b""
        while b"body_too_large" not in answer:  # the head and body may come in two segments
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        head = answer.decode("latin-1")
    assert head.startswith("HTTP/1.1 413")
    assert "body_too_large" in head


def test_chunked_body_over_the_limit_is_cut_off_with_413(client: httpx.Client) -> None:
    def chunks():  # no Content-Length: the server must count
        for _ in range(20):
            yield b"\0" * (1024 * 1024)

    response = client.post("/apply", content=chunks(), headers=NPY, params={"layer": "x"})
    assert_problem(response, 413, "body_too_large")
    assert client.get("/healthz").status_code == 200

"""/v2 end to end with the real tritonclient (sync and aio) against a real server."""

from __future__ import annotations

import asyncio
import gzip
import io
import re
import subprocess
import sys
import zlib
from typing import Any

import httpx
import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from tests.api.helpers import create
from tests.conftest import ROOT, Server


@pytest.fixture
def triton_client(server: Server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")


def apply_npy(
    client: httpx.Client,
    layer: str,
    x: np.ndarray,
    seed: int,
    training: bool = True,
    offset: int = 0,
) -> np.ndarray:
    buf = io.BytesIO()
    np.save(buf, x)
    response = client.post(
        "/apply",
        content=buf.getvalue(),
        headers={"content-type": "application/x-npy"},
        params={
            "layer": layer,
            "training": str(training).lower(),
            "seed": seed,
            "sample_offset": offset,
        },
    )
    assert response.status_code == 200, response.text
    out = np.load(io.BytesIO(response.content))
    return out.view(x.dtype) if out.dtype.kind == "V" else out


def infer_input(x: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("input", list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def test_health_and_metadata(
    triton_client: triton.InferenceServerClient, client: httpx.Client
) -> None:
    layer = create(client, rate=0.5, batch_size=4, data_format="channels_first")
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready(layer["name"])
    assert triton_client.is_model_ready(layer["name"], model_version="1")
    assert not triton_client.is_model_ready("no-such-layer")
    meta = triton_client.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"]
    model = triton_client.get_model_metadata(layer["name"])
    assert model["name"] == layer["name"] and model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [4, -1, -1, -1]}]
    assert model["outputs"][1] == {"name": "mask", "datatype": "BOOL", "shape": [4, -1]}
    assert triton_client.get_model_metadata(layer["name"], model_version="1") == model


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_infer_equals_apply_bit_for_bit(
    triton_client: triton.InferenceServerClient,
    client: httpx.Client,
    binary_in: bool,
    binary_out: bool,
) -> None:
    layer = create(client, rate=0.4)
    x = np.random.default_rng(5).standard_normal((3, 4, 4, 6)).astype(np.float32)
    result = triton_client.infer(
        layer["name"],
        [infer_input(x, "FP32", binary_in)],
        outputs=[
            triton.InferRequestedOutput("output", binary_data=binary_out),
            triton.InferRequestedOutput("mask", binary_data=binary_out),
        ],
        request_id="req-1",
        parameters={"training": True, "seed": 11, "sample_offset": 2},
    )
    response = result.get_response()
    assert response["id"] == "req-1"
    assert response["parameters"]["seed"] == 11
    out = result.as_numpy("output")
    np.testing.assert_array_equal(out, apply_npy(client, layer["name"], x, 11, offset=2))
    mask = result.as_numpy("mask")
    assert mask.shape == (3, 6) and mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, out[:, 0, 0, :] != 0)


@pytest.mark.parametrize(
    ("dtype", "datatype"),
    [(np.float16, "FP16"), (np.float64, "FP64"), (ml_dtypes.bfloat16, "BF16")],
)
def test_other_datatypes(
    triton_client: triton.InferenceServerClient, client: httpx.Client, dtype: Any, datatype: str
) -> None:
    layer = create(client, rate=0.5, kind="spatial_dropout_1d")
    x = np.random.default_rng(6).standard_normal((2, 5, 3)).astype(dtype)
    result = triton_client.infer(
        layer["name"], [infer_input(x, datatype, True)], parameters={"training": True, "seed": 3}
    )
    out = result.as_numpy("output")
    assert out.dtype == np.dtype(dtype)
    expected = apply_npy(client, layer["name"], x, 3)
    np.testing.assert_array_equal(out.view(np.uint8), expected.view(np.uint8))


def test_the_onnxruntime_engine_answers_what_numpy_answers(
    triton_client: triton.InferenceServerClient, client: httpx.Client
) -> None:
    layer = create(client, rate=0.5)
    x = np.random.default_rng(7).standard_normal((2, 3, 3, 5)).astype(np.float32)
    params = {"training": True, "seed": 4, "sample_offset": 3, "engine": "onnxruntime"}
    result = triton_client.infer(layer["name"], [infer_input(x, "FP32", True)], parameters=params)
    np.testing.assert_array_equal(
        result.as_numpy("output"), apply_npy(client, layer["name"], x, 4, offset=3)
    )
    # onnxruntime has no bfloat16 kernel, so that request proves which engine ran.
    bf16 = x.astype(ml_dtypes.bfloat16)
    with pytest.raises(InferenceServerException, match="onnxruntime"):
        triton_client.infer(layer["name"], [infer_input(bf16, "BF16", True)], parameters=params)
    params["engine"] = "tensorflow"
    with pytest.raises(InferenceServerException, match="engine"):
        triton_client.infer(layer["name"], [infer_input(x, "FP32", True)], parameters=params)


def test_a_layer_has_version_1_only(client: httpx.Client) -> None:
    layer = create(client, rate=0.5)
    body = {"inputs": [{"name": "x", "shape": [1, 1, 1, 2], "datatype": "FP32", "data": [1, 2]}]}
    base = f"/v2/models/{layer['name']}/versions"
    assert client.get(f"{base}/1").json()["versions"] == ["1"]
    assert client.get(f"{base}/1/ready").json() == {"name": layer["name"], "ready": True}
    assert client.post(f"{base}/1/infer", json=body).status_code == 200
    for answer in (
        client.get(f"{base}/2"),
        client.get(f"{base}/2/ready"),
        client.post(f"{base}/2/infer", json=body),
    ):
        assert answer.status_code == 404, answer.text
        assert answer.json() == {
            "error": f"Model {layer['name']!r} has no version '2'; its only version is '1'."
        }


def test_inference_mode_is_identity_and_seed_is_reported(
    triton_client: triton.InferenceServerClient, client: httpx.Client
) -> None:
    layer = create(client, rate=0.9)
    x = np.random.default_rng(7).standard_normal((2, 2, 2, 2)).astype(np.float32)
    result = triton_client.infer(layer["name"], [infer_input(x, "FP32", True)])
    np.testing.assert_array_equal(result.as_numpy("output"), x)
    params = result.get_response()["parameters"]
    assert params["training"] is False and isinstance(params["seed"], int)


def test_gzip_and_deflate_requests(
    triton_client: triton.InferenceServerClient, client: httpx.Client
) -> None:
    layer = create(client, rate=0.5)
    x = np.ones((2, 2, 2, 4), dtype=np.float32)
    for algorithm in ("gzip", "deflate"):
        result = triton_client.infer(
            layer["name"],
            [infer_input(x, "FP32", True)],
            parameters={"training": True, "seed": 1},
            request_compression_algorithm=algorithm,
        )
        np.testing.assert_array_equal(
            result.as_numpy("output"), apply_npy(client, layer["name"], x, 1)
        )


def test_errors_reach_the_client_as_messages(
    triton_client: triton.InferenceServerClient, client: httpx.Client
) -> None:
    x = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(InferenceServerException) as missing:
        triton_client.infer("no-such-layer", [infer_input(x, "FP32", True)])
    assert missing.value.status() == "404"
    assert "no-such-layer" in missing.value.message()
    layer = create(client, rate=0.5)
    with pytest.raises(InferenceServerException) as rank:
        triton_client.infer(layer["name"], [infer_input(x, "FP32", True)])
    assert rank.value.status() == "422"
    assert "expected ndim=4, found ndim=2" in rank.value.message()
    with pytest.raises(InferenceServerException) as version:
        triton_client.get_model_metadata(layer["name"], model_version="2")
    assert version.value.status() == "404"
    ints = triton.InferInput("input", [1, 1, 1, 2], "INT32")
    ints.set_data_from_numpy(np.zeros((1, 1, 1, 2), dtype=np.int32))
    with pytest.raises(InferenceServerException) as dtype:
        triton_client.infer(layer["name"], [ints])
    assert dtype.value.status() == "422" and "INT32" in dtype.value.message()


def test_aio_client(server: Server, client: httpx.Client) -> None:
    layer = create(client, rate=0.5)
    x = np.random.default_rng(8).standard_normal((2, 3, 3, 2)).astype(np.float32)

    async def run() -> tuple[bool, np.ndarray, dict[str, Any]]:
        aio = triton_aio.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        try:
            ready = await aio.is_model_ready(layer["name"])
            tensor = triton_aio.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            result = await aio.infer(
                layer["name"], [tensor], parameters={"training": True, "seed": 9}
            )
            return ready, result.as_numpy("output"), result.get_response()
        finally:
            await aio.close()

    ready, out, response = asyncio.run(run())
    assert ready
    assert response["parameters"]["seed"] == 9
    np.testing.assert_array_equal(out, apply_npy(client, layer["name"], x, 9))


def _binary_request(x: np.ndarray, size: int | None = None) -> tuple[bytes, int]:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": size or x.nbytes},
                }
            ]
        }
    )
    return header + x.tobytes(), len(header)


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("100000", "the body has only"),
        ("-5", "non-negative integer"),
        ("ten", "non-negative integer"),
        ("0", "raw binary request"),
    ],
)
def test_malformed_inference_header_length_is_400(
    client: httpx.Client, header: str, fragment: str
) -> None:
    layer = create(client, rate=0.5)
    body, _ = _binary_request(np.ones((1, 1, 1, 2), dtype=np.float32))
    response = client.post(
        f"/v2/models/{layer['name']}/infer",
        content=body,
        headers={"Inference-Header-Content-Length": header},
    )
    assert response.status_code == 400
    assert fragment in response.json()["error"]
    assert set(response.json()) == {"error"}


def test_binary_sizes_that_do_not_add_up_are_400(client: httpx.Client) -> None:
    layer = create(client, rate=0.5)
    x = np.ones((1, 1, 1, 2), dtype=np.float32)
    body, length = _binary_request(x, size=4)  # says 4 bytes, 8 follow
    response = client.post(
        f"/v2/models/{layer['name']}/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(length)},
    )
    assert response.status_code == 400 and "binary_data_size is 4" in response.json()["error"]
    # A JSON header whose length cuts the JSON short.
    body, length = _binary_request(x)
    response = client.post(
        f"/v2/models/{layer['name']}/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(length - 3)},
    )
    assert response.status_code == 400 and "error" in response.json()


def test_json_infer_without_content_type_and_corrupt_gzip(client: httpx.Client) -> None:
    layer = create(client, rate=0.5)
    request = {
        "id": "a",
        "inputs": [
            {"name": "input", "shape": [1, 1, 1, 2], "datatype": "FP32", "data": [[[[1.0, 2.0]]]]}
        ],
    }
    response = client.post(f"/v2/models/{layer['name']}/infer", content=orjson.dumps(request))
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"] == [1.0, 2.0]
    assert response.json()["id"] == "a"
    response = client.post(
        f"/v2/models/{layer['name']}/infer",
        content=b"\x1f\x8bnot gzip",
        headers={"content-encoding": "gzip"},
    )
    assert response.status_code == 400 and "error" in response.json()
    bomb = gzip.compress(b"\0" * (16 * 1024 * 1024))  # inflates past the 8 MiB test limit
    response = client.post(
        f"/v2/models/{layer['name']}/infer", content=bomb, headers={"content-encoding": "gzip"}
    )
    assert response.status_code == 413 and "error" in response.json()
    response = client.post(
        f"/v2/models/{layer['name']}/infer",
        content=zlib.compress(orjson.dumps(request)),
        headers={"content-encoding": "br"},
    )
    assert response.status_code == 415


def test_unknown_v2_route_is_a_v2_error(client: httpx.Client) -> None:
    response = client.get("/v2/nothing/here")
    assert response.status_code == 404 and set(response.json()) == {"error"}


def test_the_readme_tritonclient_snippet_runs(server: Server, client: httpx.Client) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (snippet,) = [
        block
        for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
        if "tritonclient" in block and 'client.infer("sd"' in block
    ]
    if client.get("/layers/sd").status_code == 404:
        create(client, name="sd", rate=0.5)
    run = subprocess.run(
        [sys.executable, "-c", snippet.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith(" 7")  # the seed, echoed in the response parameters

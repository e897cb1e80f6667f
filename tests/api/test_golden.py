"""Every protocol answers the golden mask, not merely what the numpy kernel answers.

The other API tests compare the server with ``kernel.apply``, the code under test; here the
reference is independent of it: tests/golden.py's mask (pinned by onnxruntime) and the dropout
formula written out below. A kernel and server wrong the same way fail here.
"""

from __future__ import annotations

import sys
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton

from tests.api.helpers import create, fp32_input, load, npy
from tests.conftest import Server
from tests.golden import GOLDEN

#: seed 0, spatial_dropout_2d, rate 0.5, channels_last, input (3, 2, 2, 5).
CASE = GOLDEN[0]
SEED = CASE.seed
MASK = np.array(CASE.mask, dtype=bool)  # (samples, channels)
X = np.arange(1, 61, dtype=np.float32).reshape(CASE.shape)
# The formula: a kept channel is scaled by 1 / (1 - rate) = 2, a dropped one is zero.
EXPECTED = np.where(MASK[:, None, None, :], X * 2, np.float32(0))

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="default_random_engine is libstdc++'s only"
)


@pytest.fixture
def layer(client: httpx.Client) -> str:
    assert CASE.config.rate == 0.5 and CASE.config.data_format.value == "channels_last"
    name: str = create(client, kind="spatial_dropout_2d", rate=0.5, seed=SEED)["name"]
    return name


def test_the_expected_answer_is_not_trivial() -> None:
    assert 0 < MASK.sum() < MASK.size
    assert EXPECTED[0, 0, 0].tolist() == [0, 0, 6, 0, 10]


@pytest.mark.parametrize("engine", ["numpy", pytest.param("onnxruntime", marks=linux_only)])
def test_apply_json(client: httpx.Client, layer: str, engine: str) -> None:
    body = {
        "layer": layer,
        "training": True,
        "seed": SEED,
        "return_mask": True,
        "engine": engine,
        "input": X.tolist(),
    }
    response = client.post("/apply", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    np.testing.assert_array_equal(np.array(answer["output"], np.float32), EXPECTED)
    assert answer["mask"] == MASK.tolist()


@pytest.mark.parametrize("engine", ["numpy", pytest.param("onnxruntime", marks=linux_only)])
def test_apply_npy(client: httpx.Client, layer: str, engine: str) -> None:
    response = client.post(
        "/apply",
        params={"layer": layer, "training": "true", "seed": SEED, "engine": engine},
        content=npy(X),
        headers={"content-type": "application/x-npy"},
    )
    assert response.status_code == 200, response.text
    got = load(response.content)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, EXPECTED)


def test_v2_json(client: httpx.Client, layer: str) -> None:
    request = {
        "inputs": [fp32_input(X)],
        "outputs": [{"name": "output"}, {"name": "mask"}],
        "parameters": {"training": True, "seed": SEED},
    }
    response = client.post(f"/v2/models/{layer}/infer", json=request)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    output, mask = outputs["output"], outputs["mask"]
    assert output["datatype"] == "FP32" and output["shape"] == list(X.shape)
    np.testing.assert_array_equal(np.array(output["data"], np.float32), EXPECTED.ravel())
    assert mask["datatype"] == "BOOL" and mask["shape"] == list(MASK.shape)
    assert mask["data"] == MASK.ravel().tolist()


def test_v2_binary(server: Server, layer: str) -> None:
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=True)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        result = client.infer(
            layer,
            [tensor],
            outputs=[
                triton.InferRequestedOutput("output", binary_data=True),
                triton.InferRequestedOutput("mask", binary_data=True),
            ],
            parameters={"training": True, "seed": SEED},
        )
    finally:
        client.close()
    np.testing.assert_array_equal(result.as_numpy("output"), EXPECTED)
    np.testing.assert_array_equal(result.as_numpy("mask"), MASK)


@linux_only
def test_onnx_export(client: httpx.Client, layer: str) -> None:
    response = client.get(f"/layers/{layer}/onnx", params={"seed": SEED})
    assert response.status_code == 200, response.text
    session = ort.InferenceSession(response.content, providers=["CPUExecutionProvider"])
    feeds: dict[str, Any] = {"X": X, "training_mode": np.array(True)}
    output, mask = session.run(None, feeds)
    np.testing.assert_array_equal(output, EXPECTED)
    assert np.asarray(mask).reshape(MASK.shape).tolist() == MASK.tolist()

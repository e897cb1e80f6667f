"""Stored models over gRPC: tritonclient.grpc gets, bit for bit, what /v2 over HTTP answers,
with training and Monte Carlo dropout (samples and statistics)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http

from harness.process import free_port
from tests.api.helpers import unique
from tests.api.test_models import composed, images, put
from tests.conftest import Server

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="default_random_engine is libstdc++'s only"
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    env = {
        "SPATIAL_DROPOUT_MAX_MC_SAMPLES": "16",
        "SPATIAL_DROPOUT_MAX_MODEL_BYTES": "4000000",
        "SPATIAL_DROPOUT_MAX_TENSOR_ELEMENTS": "100000",
    }
    database = tmp_path_factory.mktemp("grpc-models") / "layers.sqlite3"
    with Server(database, env=env, grpc_port=free_port()) as server:
        with httpx.Client(base_url=server.url, timeout=60) as api:
            name = unique("m")
            response = put(api, name, composed(api))
            assert response.status_code == 201, response.text
        yield server, name


def both(server: Server, name: str, x: np.ndarray, **parameters: Any) -> tuple[Any, Any]:
    """The gRPC answer and the REST (binary) answer to the same call."""
    g = triton.InferenceServerClient(server.grpc_target)
    inp = triton.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    by_grpc = g.infer(name, [inp], parameters=parameters)
    h = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    hinp = triton_http.InferInput("image", list(x.shape), "FP32")
    hinp.set_data_from_numpy(x)
    by_http = h.infer(name, [hinp], parameters=parameters)
    return by_grpc, by_http


def outputs_of(result: Any) -> dict[str, bytes]:
    names = [out.name for out in result.get_response().outputs]
    return {n: result.as_numpy(n).tobytes() for n in names}


def test_monte_carlo_samples_are_the_rest_answer(served: tuple[Server, str]) -> None:
    server, name = served
    by_grpc, by_http = both(server, name, images(3), mc_samples=4, seed=100)
    assert by_grpc.as_numpy("logits").shape == (4, 3, 5)
    assert outputs_of(by_grpc) == {n: by_http.as_numpy(n).tobytes() for n in ("features", "logits")}
    params = by_grpc.get_response().parameters
    assert params["seed"].int64_param == 100 and params["mc_samples"].int64_param == 4
    assert params["training"].bool_param


def test_monte_carlo_statistics_are_the_rest_answer(served: tuple[Server, str]) -> None:
    server, name = served
    by_grpc, by_http = both(server, name, images(2), mc_samples=5, seed=7, mc_statistics=True)
    got = outputs_of(by_grpc)
    assert set(got) == {"features_mean", "features_variance", "logits_mean", "logits_variance"}
    assert got == {n: by_http.as_numpy(n).tobytes() for n in got}


def test_named_statistics_and_adaptive_sampling_are_the_rest_answer(
    served: tuple[Server, str],
) -> None:
    server, name = served
    asked = {
        "mc_samples": 16,
        "seed": 7,
        "mc_statistics": "mean,sem,quantiles,mutual_information,variation_ratio",
        "mc_softmax": True,
        "mc_class_axis": -1,
        "mc_quantiles": "0.1,0.9",
        "mc_tolerance": 0.2,
    }
    g = triton.InferenceServerClient(server.grpc_target)
    inp = triton.InferInput("image", list(images(2).shape), "FP32")
    inp.set_data_from_numpy(images(2))
    wanted = [triton.InferRequestedOutput("logits")]
    by_grpc = g.infer(name, [inp], parameters=asked, outputs=wanted)
    h = triton_http.InferenceServerClient(server.url.removeprefix("http://"))
    hinp = triton_http.InferInput("image", list(images(2).shape), "FP32")
    hinp.set_data_from_numpy(images(2))
    by_http = h.infer(
        name, [hinp], parameters=asked, outputs=[triton_http.InferRequestedOutput("logits")]
    )
    got = outputs_of(by_grpc)
    assert set(got) == {f"logits_{n}" for n in str(asked["mc_statistics"]).split(",")}
    assert got == {n: by_http.as_numpy(n).tobytes() for n in got}
    params = by_grpc.get_response().parameters
    used = params["mc_samples_used"].int64_param
    assert used == by_http.get_response()["parameters"]["mc_samples_used"] == 8
    assert by_grpc.as_numpy("logits_quantiles").shape == (2, 2, 5)


def test_a_training_call_and_metadata(served: tuple[Server, str]) -> None:
    server, name = served
    by_grpc, by_http = both(server, name, images(2), training=True, seed=3)
    assert outputs_of(by_grpc) == {n: by_http.as_numpy(n).tobytes() for n in ("features", "logits")}
    meta = triton.InferenceServerClient(server.grpc_target).get_model_metadata(name, as_json=True)
    rest = httpx.get(f"{server.url}/v2/models/{name}").json()
    assert [i["name"] for i in meta["inputs"]] == [i["name"] for i in rest["inputs"]]
    assert [o["name"] for o in meta["outputs"]] == [o["name"] for o in rest["outputs"]]


def test_too_many_samples_is_invalid_argument(served: tuple[Server, str]) -> None:
    server, name = served
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as caught:
        both(server, name, images(1), mc_samples=17, seed=1)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"

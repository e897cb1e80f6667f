"""The Open Inference Protocol over gRPC, end to end: tritonclient.grpc (sync and aio),
unchanged, against a real server, answering bit for bit what /v2 over HTTP answers."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import httpx
import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
import tritonclient.http as triton_http
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import Server
from tests.grpc.conftest import LAYER

DTYPES = {
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BF16": ml_dtypes.bfloat16,
}


def sample(shape: tuple[int, ...], dtype: Any = np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def grpc_infer(
    client: triton.InferenceServerClient,
    x: np.ndarray,
    datatype: str,
    *,
    outputs: tuple[str, ...] = ("output", "mask"),
    **parameters: Any,
) -> triton.InferResult:
    inp = triton.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    wanted = [triton.InferRequestedOutput(name) for name in outputs]
    return client.infer(LAYER, [inp], outputs=wanted, parameters=parameters, request_id="r-1")


def http_infer(server: Server, x: np.ndarray, datatype: str, **parameters: Any) -> Any:
    client = triton_http.InferenceServerClient(server.url[len("http://") :])
    inp = triton_http.InferInput("input", list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    wanted = [triton_http.InferRequestedOutput(name) for name in ("output", "mask")]
    return client.infer(LAYER, [inp], outputs=wanted, parameters=parameters)


def bits(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array).tobytes()


# -- health and metadata ------------------------------------------------------------------


def test_health(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(LAYER)
    assert client.is_model_ready(LAYER, "1")


def test_grpc_health_v1(grpc_server: Server) -> None:
    with grpc.insecure_channel(grpc_server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        assert stub.Check(health_pb2.HealthCheckRequest()).status == serving
        named = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        assert stub.Check(named).status == serving
        other = stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert other.status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


def test_server_metadata(client: triton.InferenceServerClient, http: httpx.Client) -> None:
    meta = client.get_server_metadata(as_json=True)
    rest = http.get("/v2").json()
    assert meta == {
        "name": rest["name"],
        "version": rest["version"],
        "extensions": rest["extensions"],
    }


def test_model_metadata_is_the_rest_metadata(
    client: triton.InferenceServerClient, http: httpx.Client
) -> None:
    meta = client.get_model_metadata(LAYER, as_json=True)
    rest = http.get(f"/v2/models/{LAYER}").json()
    assert meta["name"] == rest["name"] == LAYER
    assert meta["versions"] == rest["versions"] == ["1"]
    assert meta["platform"] == rest["platform"]
    for kind in ("inputs", "outputs"):
        # protobuf's JSON form writes int64 as strings
        got = [{**t, "shape": [int(d) for d in t["shape"]]} for t in meta[kind]]
        assert got == rest[kind]


# -- infer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(DTYPES))
def test_raw_infer_is_the_rest_answer_bit_for_bit(
    client: triton.InferenceServerClient, grpc_server: Server, datatype: str
) -> None:
    x = sample((3, 5, 6, 7), DTYPES[datatype])
    got = grpc_infer(client, x, datatype, training=True, seed=11)
    rest = http_infer(grpc_server, x, datatype, training=True, seed=11)
    output = got.as_numpy("output")
    assert output.dtype == x.dtype and output.shape == x.shape
    assert bits(output) == bits(rest.as_numpy("output"))
    assert (got.as_numpy("mask") == rest.as_numpy("mask")).all()
    assert not got.as_numpy("mask").all() and got.as_numpy("mask").any()  # it dropped some
    response = got.get_response(as_json=True)
    assert response["parameters"]["seed"] == {"int64_param": "11"}
    assert response["parameters"]["training"] == {"bool_param": True}
    assert response["id"] == "r-1"
    assert response["model_name"] == LAYER and response["model_version"] == "1"


def test_without_a_seed_the_drawn_one_replays_the_call(
    client: triton.InferenceServerClient,
) -> None:
    x = sample((2, 4, 4, 8))
    first = grpc_infer(client, x, "FP32", training=True)
    param = first.get_response().parameters["seed"]
    seed = getattr(param, param.WhichOneof("parameter_choice"))
    again = grpc_infer(client, x, "FP32", training=True, seed=seed)
    assert bits(again.as_numpy("output")) == bits(first.as_numpy("output"))


def test_inference_mode_is_the_identity(client: triton.InferenceServerClient) -> None:
    x = sample((2, 4, 4, 3), np.float64)
    got = grpc_infer(client, x, "FP64", outputs=("output",), seed=3)
    assert bits(got.as_numpy("output")) == bits(x)


def test_a_4_mib_tensor(client: triton.InferenceServerClient, grpc_server: Server) -> None:
    x = sample((1, 512, 512, 4))
    assert x.nbytes == 4 * 1024 * 1024
    got = grpc_infer(client, x, "FP32", training=True, seed=5, sample_offset=2)
    rest = http_infer(grpc_server, x, "FP32", training=True, seed=5, sample_offset=2)
    assert bits(got.as_numpy("output")) == bits(rest.as_numpy("output"))


def typed_request(x: np.ndarray, datatype: str, field: str) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=LAYER, id="typed")
    request.parameters["training"].bool_param = True
    request.parameters["seed"].int64_param = 9
    tensor = request.inputs.add(name="input", datatype=datatype, shape=x.shape)
    getattr(tensor.contents, field).extend(x.reshape(-1).tolist())
    request.outputs.add(name="output")
    return request


@pytest.mark.parametrize(
    ("datatype", "field"), [("FP32", "fp32_contents"), ("FP64", "fp64_contents")]
)
def test_typed_contents_give_the_raw_answer(
    client: triton.InferenceServerClient, grpc_server: Server, datatype: str, field: str
) -> None:
    x = sample((2, 3, 3, 5), DTYPES[datatype])
    raw = grpc_infer(client, x, datatype, outputs=("output",), training=True, seed=9)
    with grpc.insecure_channel(grpc_server.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(typed_request(x, datatype, field))
    assert response.id == "typed"
    (output,) = response.outputs
    assert output.datatype == datatype and list(output.shape) == list(x.shape)
    got = np.frombuffer(response.raw_output_contents[0], dtype=x.dtype).reshape(x.shape)
    assert bits(got) == bits(raw.as_numpy("output"))


def test_the_aio_client(grpc_server: Server) -> None:
    x = sample((2, 6, 6, 4))

    async def run() -> tuple[bool, np.ndarray, dict[str, Any]]:
        async with triton_aio.InferenceServerClient(grpc_server.grpc_target) as client:
            live = await client.is_server_live()
            inp = triton_aio.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            result = await client.infer(LAYER, [inp], parameters={"training": True, "seed": 4})
            meta = await client.get_model_metadata(LAYER, as_json=True)
            return live, result.as_numpy("output"), meta

    live, output, meta = asyncio.run(run())
    assert live and meta["name"] == LAYER
    rest = http_infer(grpc_server, x, "FP32", training=True, seed=4)
    assert bits(output) == bits(rest.as_numpy("output"))


# -- errors: the gRPC status, with the REST message -----------------------------------------


def grpc_error(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def rest_error(http: httpx.Client, path: str, body: dict[str, Any]) -> str:
    response = http.post(path, json=body)
    assert response.status_code >= 400
    message: str = response.json()["error"]
    return message


def test_an_unknown_model_is_not_found(
    client: triton.InferenceServerClient, http: httpx.Client
) -> None:
    error = grpc_error(lambda: client.get_model_metadata("no-such-layer"))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == http.get("/v2/models/no-such-layer").json()["error"]
    x = sample((1, 2, 2, 2))
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    error = grpc_error(lambda: client.infer("no-such-layer", [inp]))
    assert error.status() == "StatusCode.NOT_FOUND"
    error = grpc_error(lambda: client.is_model_ready(LAYER, "2"))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert error.message() == http.get(f"/v2/models/{LAYER}/versions/2").json()["error"]


@pytest.mark.parametrize(
    ("parameters", "json_parameters"),
    [
        ({"seed": -1}, {"seed": -1}),
        ({"training": "yes"}, {"training": "yes"}),
        ({"engine": "tensorflow"}, {"engine": "tensorflow"}),
    ],
)
def test_a_bad_parameter_is_invalid_argument_with_the_rest_message(
    client: triton.InferenceServerClient,
    http: httpx.Client,
    parameters: dict[str, Any],
    json_parameters: dict[str, Any],
) -> None:
    x = sample((1, 2, 2, 2))
    error = grpc_error(lambda: grpc_infer(client, x, "FP32", **parameters))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    body = {
        "parameters": json_parameters,
        "inputs": [{"name": "input", "shape": [1, 2, 2, 2], "datatype": "FP32", "data": [0.0] * 8}],
    }
    assert error.message() == rest_error(http, f"/v2/models/{LAYER}/infer", body)


def test_bad_inputs_are_invalid_argument(
    client: triton.InferenceServerClient, grpc_server: Server
) -> None:
    x = sample((1, 2, 2, 2))
    unknown = grpc_error(lambda: grpc_infer(client, x, "FP32", outputs=("logits",)))
    assert unknown.status() == "StatusCode.INVALID_ARGUMENT"
    assert "Unknown output 'logits'" in unknown.message()
    ints = grpc_error(lambda: grpc_infer(client, x.astype(np.int32), "INT32"))
    assert ints.status() == "StatusCode.INVALID_ARGUMENT"
    assert ints.message().startswith("Unsupported dtype 'INT32'")
    rank = grpc_error(lambda: grpc_infer(client, x.reshape(2, 2, 2), "FP32"))
    assert rank.status() == "StatusCode.INVALID_ARGUMENT"
    with grpc.insecure_channel(grpc_server.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = typed_request(x, "FP32", "fp32_contents")
        request.inputs[0].datatype = "FP16"
        with pytest.raises(grpc.RpcError) as typed:
            stub.ModelInfer(request)
        assert typed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "FP16 has no typed contents" in typed.value.details()
        request = typed_request(x, "FP32", "fp32_contents")
        request.inputs[0].shape[0] = 2  # 16 elements declared, 8 given
        with pytest.raises(grpc.RpcError) as short:
            stub.ModelInfer(request)
        assert short.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(short.value.trailing_metadata())["error-code"] == "shape_mismatch"
        garbage = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as broken:
            garbage(b"\xff\xff\xff\xff")
        assert broken.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_message_over_the_body_limit_is_resource_exhausted(
    client: triton.InferenceServerClient,
) -> None:
    x = np.zeros((1, 1024, 1024, 3), dtype=np.float32)  # 12 MiB, over the 8 MiB limit
    error = grpc_error(lambda: grpc_infer(client, x, "FP32", outputs=("output",)))
    assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert client.is_server_live()  # and the server goes on


def test_grpc_calls_are_counted_by_method(
    client: triton.InferenceServerClient, http: httpx.Client
) -> None:
    def count(method: str, code: str) -> float:
        for line in http.get("/metrics").text.splitlines():
            if line.startswith(
                f'spatial_dropout_grpc_requests_total{{code="{code}",method="{method}"}}'
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count("ModelInfer", "OK"), count("ModelMetadata", "NOT_FOUND")
    grpc_infer(client, sample((1, 2, 2, 2)), "FP32", seed=1)
    grpc_error(lambda: client.get_model_metadata("no-such-layer"))
    assert count("ModelInfer", "OK") == before[0] + 1
    assert count("ModelMetadata", "NOT_FOUND") == before[1] + 1

"""POST /layers/{ref}/compose on a real server: the composed model agrees with the server's own
/apply, the seed is reported, and every hostile model gets its problem code and leaves the
store as it was."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from google.protobuf.internal.encoder import _VarintBytes
from onnx import TensorProto, helper, numpy_helper

from service.compose import read_record
from tests.api.helpers import assert_problem, create, load, npy
from tests.onnx.torch_models import exported, image, run

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="default_random_engine is libstdc++'s only"
)

ONNX = {"content-type": "application/octet-stream"}


@pytest.fixture
def layer(client: httpx.Client) -> dict[str, Any]:
    return create(client, data_format="channels_first", seed=21)


def post(client: httpx.Client, ref: str, body: bytes, **query: Any) -> httpx.Response:
    return client.post(f"/layers/{ref}/compose", params=query, content=body, headers=ONNX)


def test_the_composed_model_applies_the_layer_as_apply_does(
    client: httpx.Client, layer: dict[str, Any]
) -> None:
    original = exported("cnn", "torchscript", 17)
    response = post(client, layer["name"], original, after=["features"], seed=5)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["x-seed"] == "5"
    x = image("cnn")
    features = run(original, {"image": x})[0]
    trained = run(response.content, {"image": x, "training_mode": np.array(True)})[0]
    applied = client.post(
        "/apply",
        params={"layer": layer["id"], "training": "true", "seed": "5"},
        content=npy(features),
        headers={"content-type": "application/x-npy"},
    )
    assert applied.status_code == 200
    assert np.array_equal(trained.view(np.uint32), load(applied.content).view(np.uint32))
    assert np.array_equal(run(response.content, {"image": x})[0], features)


def test_the_seed_is_the_layers_else_one_drawn(client: httpx.Client, layer: dict[str, Any]) -> None:
    original = exported("cnn", "torchscript", 17)
    inside = "/Relu_output_0"
    response = post(client, layer["id"], original, after=[inside, "features"])
    assert response.status_code == 200, response.text
    assert response.headers["x-seed"] == "21"
    record = read_record(onnx.load_from_string(response.content))
    assert [(r.tensor, r.seed) for r in record] == [(inside, 21), ("features", 22)]
    unseeded = create(client, data_format="channels_first")
    drawn = post(client, unseeded["name"], original, after=["features"])
    assert drawn.status_code == 200
    seed = int(drawn.headers["x-seed"])
    assert read_record(onnx.load_from_string(drawn.content))[0].seed == seed


def relu_model(**change: Any) -> onnx.ModelProto:
    dims = change.get("dims", ["N", 3, 4, 4])
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, dims)]
    inputs += change.get("inputs", [])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["X"], ["Y"])],
        "g",
        inputs,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, dims)],
        initializer=change.get("initializer", []),
    )
    opset = [helper.make_opsetid("", change.get("opset", 17))]
    return helper.make_model(graph, opset_imports=opset, ir_version=8)


def external() -> bytes:
    model = relu_model()
    tensor = numpy_helper.from_array(np.ones(3, np.float32), "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="/etc/passwd")
    model.graph.initializer.append(tensor)
    return model.SerializeToString()


def many_nodes(count: int) -> bytes:
    node = helper.make_node("Relu", ["X"], ["Y"]).SerializeToString()
    graph = (_VarintBytes(1 << 3 | 2) + _VarintBytes(len(node)) + node) * count
    return b"\x08\x08" + _VarintBytes(7 << 3 | 2) + _VarintBytes(len(graph)) + graph


def two_outputs() -> bytes:
    model = relu_model()
    model.graph.node.append(helper.make_node("Relu", ["X"], ["Z"]))
    model.graph.output.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["N", 3, 4, 4]))
    return model.SerializeToString()


def failing_checker() -> bytes:
    model = relu_model()
    model.graph.node[0].input[0] = "nowhere"
    return model.SerializeToString()


def bad_training_mode() -> bytes:
    value = helper.make_tensor_value_info("training_mode", TensorProto.INT64, [])
    return relu_model(inputs=[value]).SerializeToString()


HOSTILE: list[tuple[str, bytes, dict[str, Any], int, str]] = [
    ("not-a-model", b"certainly not protobuf \xff\xff", {}, 422, "invalid_model"),
    ("checker", failing_checker(), {}, 422, "invalid_model"),
    ("external", external(), {}, 422, "external_data"),
    ("opset-12", relu_model(opset=12).SerializeToString(), {}, 422, "unsupported_opset"),
    ("opset-99", relu_model(opset=99).SerializeToString(), {}, 422, "unsupported_opset"),
    ("training_mode", bad_training_mode(), {}, 422, "invalid_training_mode"),
    ("rank", relu_model(dims=["N", 4]).SerializeToString(), {}, 422, "rank_mismatch"),
    ("unknown", relu_model().SerializeToString(), {"after": "nope"}, 422, "unknown_tensor"),
    ("ambiguous", two_outputs(), {}, 422, "ambiguous_insertion_point"),
    ("too-many-nodes", many_nodes(200_000), {}, 413, "too_many_nodes"),
    ("body", bytes(9 * 1024 * 1024), {}, 413, "body_too_large"),
]


def layer_list(client: httpx.Client) -> Iterator[dict[str, Any]]:
    page: dict[str, Any] = {"next_cursor": None}
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = client.get("/layers", params=params).json()
        yield from page["items"]
        if page["next_cursor"] is None:
            return
        params["cursor"] = page["next_cursor"]


@pytest.mark.parametrize(
    ("body", "query", "status", "code"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_hostile_models_get_their_code_and_the_store_is_unchanged(
    client: httpx.Client,
    layer: dict[str, Any],
    body: bytes,
    query: dict[str, Any],
    status: int,
    code: str,
) -> None:
    before = list(layer_list(client))
    assert_problem(post(client, layer["name"], body, **query), status, code)
    assert list(layer_list(client)) == before


def test_an_unknown_layer_a_wrong_media_type_and_a_bad_seed(client: httpx.Client) -> None:
    model = relu_model().SerializeToString()
    assert_problem(post(client, "no-such-layer", model), 404, "layer_not_found")
    layer = create(client, data_format="channels_first")
    wrong = client.post(
        f"/layers/{layer['name']}/compose", content=model, headers={"content-type": "text/plain"}
    )
    assert_problem(wrong, 415, "unsupported_media_type")
    assert_problem(post(client, layer["name"], model, seed=-1), 422, "validation_error")

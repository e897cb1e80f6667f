"""Stored models end to end: /models, and /v2 with training and Monte Carlo dropout on a model
composed from a torch export, against onnxruntime on the composed file itself."""

from __future__ import annotations

import hashlib
import io
import sys
import threading
import warnings
from collections.abc import Iterator
from functools import cache
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import torch
import tritonclient.http as triton
from numpy.typing import NDArray

from tests.api.helpers import assert_problem, create, unique
from tests.conftest import Server, client_of, serving
from tests.onnx.torch_models import network, run

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="default_random_engine is libstdc++'s only"
)

ONNX = {"content-type": "application/octet-stream"}
SEED = 11


@cache
def plain() -> bytes:
    """The small CNN exported with a free batch axis (input "image", outputs features, logits)."""
    module, shape, outputs = network("cnn")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(shape),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["image", *outputs]},
        )
    return buffer.getvalue()


def first_relu(model: bytes) -> str:
    proto = onnx.load_from_string(model)
    return next(node.output[0] for node in proto.graph.node if node.op_type == "Relu")


def images(batch: int, seed: int = 3) -> NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((batch, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(
        tmp_path_factory,
        "models",
        max_mc_samples=16,
        max_model_bytes=4_000_000,
        max_tensor_elements=100_000,
    )


@pytest.fixture
def api(model_server: Server) -> Iterator[httpx.Client]:
    yield from client_of(model_server)


def composed(api: httpx.Client, seed: int = SEED, mask: str = "dropout") -> bytes:
    """The CNN with a channels_first spatial dropout after its first ReLU and after
    ``features``: K = 2 inserted layers, their masks in the form ``mask``."""
    layer = create(api, data_format="channels_first", rate=0.3, name=unique("sd"))
    response = api.post(
        f"/layers/{layer['name']}/compose",
        params={"after": [first_relu(plain()), "features"], "seed": seed, "mask": mask},
        content=plain(),
        headers=ONNX,
    )
    assert response.status_code == 200, response.text
    return response.content


def put(api: httpx.Client, name: str, model: bytes) -> httpx.Response:
    return api.put(f"/models/{name}", content=model, headers=ONNX)


def infer(
    api: httpx.Client, name: str, x: NDArray[np.float32], **parameters: Any
) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ],
        "parameters": parameters,
    }
    response = api.post(f"/v2/models/{name}/infer", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    outputs = {
        out["name"]: np.array(out["data"], np.float32).reshape(out["shape"])
        for out in answer["outputs"]
    }
    return outputs, answer["parameters"]


@pytest.fixture(params=["dropout", "portable"])
def stored(api: httpx.Client, request: pytest.FixtureRequest) -> tuple[str, bytes]:
    """A model composed in each mask form, stored: both are served alike."""
    name = unique("m")
    model = composed(api, mask=request.param)
    response = put(api, name, model)
    assert response.status_code == 201, response.text
    return name, model


def test_inference_equals_onnxruntime_on_the_plain_model(
    api: httpx.Client, stored: tuple[str, bytes]
) -> None:
    name, _ = stored
    x = images(2)
    outputs, params = infer(api, name, x)
    features, logits = run(plain(), {"image": x})
    assert np.array_equal(outputs["features"], features)
    assert np.array_equal(outputs["logits"], logits)
    assert params == {"training": False}


def test_a_training_call_equals_the_composed_files_first_run(
    api: httpx.Client, stored: tuple[str, bytes]
) -> None:
    name, model = stored
    x = images(2)
    outputs, params = infer(api, name, x, training=True, seed=SEED)
    features, logits = run(model, {"image": x, "training_mode": np.array(True)})
    assert params["seed"] == SEED
    assert np.array_equal(outputs["features"].view(np.uint32), features.view(np.uint32))
    assert np.array_equal(outputs["logits"].view(np.uint32), logits.view(np.uint32))
    # The model's own seed is the default.
    again, params = infer(api, name, x, training=True)
    assert params["seed"] == SEED and np.array_equal(again["logits"], outputs["logits"])
    other, _ = infer(api, name, x, training=True, seed=SEED + 1)
    assert not np.array_equal(other["logits"], outputs["logits"])


def test_monte_carlo_sample_t_is_the_training_call_with_seed_plus_t_k(
    api: httpx.Client, stored: tuple[str, bytes]
) -> None:
    name, _ = stored
    x, samples, k = images(3), 4, 2
    outputs, params = infer(api, name, x, mc_samples=samples, seed=100)
    assert params == {"training": True, "seed": 100, "mc_samples": samples}
    assert outputs["logits"].shape == (samples, 3, 5)
    for t in range(samples):
        single, _ = infer(api, name, x, training=True, seed=100 + t * k)
        for out in ("features", "logits"):
            assert np.array_equal(outputs[out][t].view(np.uint32), single[out].view(np.uint32))
    stats, _ = infer(api, name, x, mc_samples=samples, seed=100, mc_statistics=True)
    assert set(stats) == {"features_mean", "features_variance", "logits_mean", "logits_variance"}
    wide = outputs["logits"].astype(np.float64)
    np.testing.assert_array_equal(stats["logits_mean"], wide.mean(0).astype(np.float32))
    np.testing.assert_array_equal(stats["logits_variance"], wide.var(0).astype(np.float32))


def test_a_split_batch_with_its_sample_offset_gives_the_whole_batchs_answer(
    api: httpx.Client, stored: tuple[str, bytes]
) -> None:
    name, _ = stored
    x = images(4)
    whole, _ = infer(api, name, x, mc_samples=3, seed=5)
    head, _ = infer(api, name, x[:1], mc_samples=3, seed=5)
    tail, _ = infer(api, name, x[1:], mc_samples=3, seed=5, sample_offset=1)
    joined = np.concatenate([head["logits"], tail["logits"]], axis=1)
    assert np.array_equal(joined.view(np.uint32), whole["logits"].view(np.uint32))


def test_tritonclient_calls_a_model_binary_and_json(
    model_server: Server, stored: tuple[str, bytes]
) -> None:
    name, _ = stored
    x = images(2)
    client = triton.InferenceServerClient(model_server.url.removeprefix("http://"))
    answers = []
    for binary in (True, False):
        inp = triton.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        wanted = [triton.InferRequestedOutput("logits", binary_data=binary)]
        result = client.infer(name, [inp], outputs=wanted, parameters={"mc_samples": 3, "seed": 9})
        answers.append(result.as_numpy("logits"))
        assert result.get_response()["parameters"]["seed"] == 9
    assert answers[0].shape == (3, 2, 5)
    assert np.array_equal(answers[0], answers[1])
    metadata = client.get_model_metadata(name)
    assert metadata["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    assert client.is_model_ready(name)


def test_the_model_routes(api: httpx.Client, stored: tuple[str, bytes]) -> None:
    name, model = stored
    described = api.get(f"/models/{name}").json()
    assert described["bytes"] == len(model) and len(described["sha256"]) == 64
    assert [layer["seed"] for layer in described["layers"]] == [SEED, SEED + 1]
    assert described["outputs"][1] == {"name": "logits", "datatype": "FP32", "shape": [-1, 5]}
    assert api.get(f"/models/{name}/onnx").content == model
    names = []
    cursor = None
    while True:
        page = api.get("/models", params={"limit": 1, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        names += [item["name"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert name in names
    assert put(api, name, plain()).status_code == 200  # replaced
    assert api.get(f"/models/{name}").json()["layers"] == []
    x = images(1)
    assert_v2_error(api.post(f"/v2/models/{name}/infer", json=_body(x, mc_samples=2)), 422)
    assert api.delete(f"/models/{name}").status_code == 204
    assert_problem(api.get(f"/models/{name}"), 404, "model_not_found")
    assert_problem(api.delete(f"/models/{name}"), 404, "model_not_found")
    assert api.get(f"/v2/models/{name}").status_code == 404


def _body(x: NDArray[np.float32], **parameters: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "image",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ],
        "parameters": parameters,
    }


def assert_v2_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}


def test_a_model_and_a_layer_never_share_a_name(
    api: httpx.Client, stored: tuple[str, bytes]
) -> None:
    name, _ = stored
    layer = create(api, name=unique("l"))
    assert_problem(put(api, layer["name"], plain()), 409, "name_conflict")
    taken = api.post("/layers", json={"kind": "spatial_dropout_2d", "rate": 0.5, "name": name})
    assert_problem(taken, 409, "name_conflict")


def test_limits_and_errors(api: httpx.Client, stored: tuple[str, bytes]) -> None:
    name, _ = stored
    x = images(1)
    url = f"/v2/models/{name}/infer"
    assert_v2_error(api.post(url, json=_body(x, mc_samples=17)), 422)
    assert_v2_error(api.post(url, json=_body(x, mc_samples=0)), 400)
    assert_v2_error(api.post(url, json=_body(x, mc_statistics=True)), 400)
    wrong = _body(x)
    wrong["inputs"][0]["name"] = "other"
    assert_v2_error(api.post(url, json=wrong), 400)
    wanted = {**_body(x), "outputs": [{"name": "nope"}]}
    assert_v2_error(api.post(url, json=wanted), 400)
    big = images(16)
    assert_v2_error(api.post(url, json=_body(big, mc_samples=16)), 413)  # 16*16*512 > limit?
    assert api.get(f"/v2/models/{name}/versions/2").status_code == 404


def hostile_models() -> list[tuple[bytes, int, str]]:
    proto = onnx.load_from_string(plain())
    external = onnx.ModelProto()
    external.CopyFrom(proto)
    tensor = external.graph.initializer[0]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="/etc/passwd")
    tensor.ClearField("raw_data")
    unloadable = onnx.ModelProto()
    unloadable.CopyFrom(proto)
    unloadable.graph.node[0].op_type = "NoSuchOperator"
    unloadable.graph.node[0].domain = "com.example"
    unloadable.opset_import.add(domain="com.example", version=1)
    return [
        (b"not a model", 422, "invalid_model"),
        (external.SerializeToString(), 422, "external_data"),
        (unloadable.SerializeToString(), 422, "model_not_loadable"),
        (b"\0" * 4_000_001, 413, "body_too_large"),
    ]


def test_hostile_models_are_refused_and_nothing_is_stored(api: httpx.Client) -> None:
    for body, status, code in hostile_models():
        name = unique("h")
        assert_problem(put(api, name, body), status, code)
        assert_problem(api.get(f"/models/{name}"), 404, "model_not_found")


def test_concurrent_puts_deletes_and_infers_of_one_name(
    api: httpx.Client, model_server: Server
) -> None:
    name = unique("c")
    models = [composed(api), plain()]
    x = images(1)
    statuses: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        with httpx.Client(base_url=model_server.url, timeout=60) as client:
            for j in range(6):
                step = (i + j) % 3
                if step == 0:
                    status = put(client, name, models[j % 2]).status_code
                elif step == 1:
                    status = client.delete(f"/models/{name}").status_code
                else:
                    status = client.post(f"/v2/models/{name}/infer", json=_body(x)).status_code
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(statuses) == 24
    assert set(statuses) <= {200, 201, 204, 404}, statuses
    final = api.get(f"/models/{name}")
    if final.status_code == 200:
        data = api.get(f"/models/{name}/onnx").content
        assert data in models
        assert final.json()["sha256"] == hashlib.sha256(data).hexdigest()


def test_the_same_request_gives_the_same_bytes_after_a_restart(
    tmp_path: Any, api: httpx.Client
) -> None:
    model = composed(api)
    x = images(2)
    body = _body(x, mc_samples=3, seed=77)
    server = Server(tmp_path / "restart.sqlite3")
    with server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert put(client, "r", model).status_code == 201
        first = client.post("/v2/models/r/infer", json=body).content
    with server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post("/v2/models/r/infer", json=body).content == first


def test_puts_and_deletes_need_a_token_when_auth_is_on(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    for server in serving(tmp_path_factory, "models-auth", api_tokens="tok-models"):
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert_problem(put(client, "a", plain()), 401, "unauthorized")
            good = {**ONNX, "Authorization": "Bearer tok-models"}
            wrong = {**ONNX, "Authorization": "Bearer nope"}
            assert_problem(
                client.put("/models/a", content=plain(), headers=wrong), 403, "forbidden"
            )
            assert client.put("/models/a", content=plain(), headers=good).status_code == 201
            assert client.get("/models/a").status_code == 200  # reads stay open
            assert_problem(client.delete("/models/a"), 401, "unauthorized")
            assert client.delete("/models/a", headers=good).status_code == 204


def test_the_model_repository_serves_read_only_models(
    tmp_path_factory: pytest.TempPathFactory, api: httpx.Client
) -> None:
    repository = tmp_path_factory.mktemp("repository")
    model = composed(api)
    (repository / "flat.onnx").write_bytes(plain())
    (repository / "nested").mkdir()
    (repository / "nested" / "model.onnx").write_bytes(model)
    (repository / "huge.onnx").write_bytes(b"\0" * 4_000_001)
    (repository / "notes.txt").write_text("not a model")
    settings = {"model_repository": repository, "max_model_bytes": 4_000_000}
    for server in serving(tmp_path_factory, "repo-server", **settings):
        with httpx.Client(base_url=server.url, timeout=60) as client:
            x = images(2)
            flat, _ = infer(client, "flat", x)
            assert np.array_equal(flat["logits"], run(plain(), {"image": x})[1])
            trained, _ = infer(client, "nested", x, training=True, seed=SEED)
            expected = run(model, {"image": x, "training_mode": np.array(True)})[1]
            assert np.array_equal(trained["logits"], expected)
            assert client.get("/models/nested/onnx").content == model
            described = client.get("/models/nested").json()
            assert described["read_only"] and len(described["layers"]) == 2
            assert_problem(put(client, "flat", plain()), 409, "read_only_model")
            assert_problem(client.delete("/models/flat"), 409, "read_only_model")
            assert_problem(client.get("/models/huge"), 413, "body_too_large")
            listed = [item["name"] for item in client.get("/models").json()["items"]]
            assert listed == ["flat", "nested"]  # the oversized one is left out of the listing
            for escape in ("..%2Fetc%2Fpasswd", "notes"):
                assert client.get(f"/models/{escape}").status_code == 404

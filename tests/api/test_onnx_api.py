"""GET /layers/{ref}/onnx and /apply's onnxruntime engine, end to end against a real server,
and the README's onnxruntime snippet, run as written against a model the server exported."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.cli import main
from service.compose.validate import nodes
from service.core import rng
from tests.api.helpers import assert_problem, create, load, npy, unique
from tests.conftest import ROOT, Server

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="default_random_engine is libstdc++'s only"
)

NPY = {"content-type": "application/x-npy"}
SNIPPET_MARKER = "<!-- onnx-snippet -->"


def run_model(content: bytes, x: np.ndarray, training: bool) -> tuple[np.ndarray, np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
    feeds: dict[str, Any] = {"X": x}
    if training:
        feeds["training_mode"] = np.array(True)
    y, mask = session.run(None, feeds)
    return y, mask


def apply_npy(client: httpx.Client, layer: str, x: np.ndarray, **params: Any) -> httpx.Response:
    query = {"layer": layer, **{k: str(v).lower() for k, v in params.items()}}
    return client.post("/apply", params=query, content=npy(x), headers=NPY)


@pytest.mark.parametrize(
    ("spec", "shape", "query"),
    [
        ({"kind": "spatial_dropout_2d", "data_format": "channels_last"}, (3, 4, 5, 6), {}),
        ({"kind": "spatial_dropout_2d", "data_format": "channels_first"}, (3, 6, 4, 5), {}),
        ({"kind": "spatial_dropout_1d"}, (4, 7, 5), {"opset": 13, "dtype": "float64"}),
        ({"kind": "spatial_dropout_3d"}, (2, 2, 3, 2, 5), {"dtype": "float16", "seed": 99}),
        ({"kind": "dropout", "noise_shape": [None, 1, None]}, (3, 4, 5), {"opset": 28}),
        ({"kind": "dropout"}, (6, 5), {"rank": 2, "opset": 17}),
    ],
)
def test_the_downloaded_model_answers_what_apply_answers(
    client: httpx.Client, spec: dict[str, Any], shape: tuple[int, ...], query: dict[str, Any]
) -> None:
    layer = create(client, rate=0.4, seed=5, **spec)
    answer = client.get(f"/layers/{layer['name']}/onnx", params=query)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/octet-stream"
    seed = query.get("seed", 5)
    assert answer.headers["x-seed"] == str(seed)
    assert answer.headers["content-disposition"] == (
        f'attachment; filename="{layer["name"]}.onnx"; '
        f"filename*=UTF-8''{quote(layer['name'] + '.onnx', safe='')}"
    )
    model = onnx.load_from_string(answer.content)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == query.get("opset", 21)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["seed"] == str(seed) and props["stream_seed"] == str(rng.mix_seed(seed))
    dtype = query.get("dtype", "float32")
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    x.reshape(-1)[:2] = [np.nan, -0.0]
    for training in (True, False):
        served = apply_npy(client, layer["name"], x, training=training, seed=seed)
        y, _ = run_model(answer.content, x, training)
        expected = load(served.content)
        assert y.dtype == expected.dtype and y.shape == expected.shape
        assert y.tobytes() == expected.tobytes(), training


def test_export_errors_are_problems(client: httpx.Client) -> None:
    layer = create(client, rate=0.5, seed=None)
    name = layer["name"]
    body = assert_problem(client.get(f"/layers/{name}/onnx"), 422, "seed_required")
    assert body["detail"] == (
        f"Layer {name!r} has no seed, and an exported model bakes its seed in: "
        "pass one (?seed= or --seed)."
    )
    assert client.get(f"/layers/{name}/onnx", params={"seed": 3}).status_code == 200
    assert_problem(client.get("/layers/nobody-here/onnx"), 404, "layer_not_found")
    for opset in (12, 99):
        assert_problem(
            client.get(f"/layers/{name}/onnx", params={"opset": opset, "seed": 1}),
            422,
            "unsupported_opset",
        )
    body = assert_problem(
        client.get(f"/layers/{name}/onnx", params={"dtype": "bfloat16", "seed": 1}),
        422,
        "unsupported_onnx_dtype",
    )
    assert body["detail"].startswith("No ONNX model for bfloat16: onnxruntime has no CPU kernel")
    for bad in ({"dtype": "int8"}, {"seed": -1}, {"opset": "new"}, {"rank": 3}):
        assert_problem(client.get(f"/layers/{name}/onnx", params=bad), 422, "validation_error")
    dropout = create(client, kind="dropout", rate=0.5, seed=1)["name"]
    body = assert_problem(client.get(f"/layers/{dropout}/onnx"), 422, "validation_error")
    assert "pass the input rank" in body["detail"]
    assert_problem(
        client.get(f"/layers/{name}/onnx", headers={"accept": "application/json"}),
        406,
        "not_acceptable",
    )


def test_a_unicode_name_downloads_under_its_name(client: httpx.Client) -> None:
    name = unique('Ünï "q"')
    create(client, name=name, seed=1)
    answer = client.get(f"/layers/{quote(name, safe='')}/onnx")
    assert answer.status_code == 200
    fallback = name.replace("Ü", "_").replace("ï", "_").replace('"', "_")
    assert answer.headers["content-disposition"] == (
        f'attachment; filename="{fallback}.onnx"; '
        f"filename*=UTF-8''{quote(name + '.onnx', safe='')}"
    )


def test_the_command_line_exports_the_bytes_the_server_does(
    client: httpx.Client, server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    layer = create(client, kind="spatial_dropout_3d", rate=0.25, seed=11)
    served = client.get(f"/layers/{layer['id']}/onnx", params={"opset": 19, "dtype": "float16"})
    monkeypatch.setenv("SPATIAL_DROPOUT_DATABASE_URL", f"sqlite:///{server.database}")
    out = tmp_path / "model.onnx"
    args = ["export", layer["name"], "-o", str(out), "--opset", "19", "--dtype", "float16"]
    assert main(args) == 0
    assert out.read_bytes() == served.content


# -- /apply with engine=onnxruntime ------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("training", [True, False])
def test_the_onnxruntime_engine_answers_as_numpy(
    client: httpx.Client, dtype: str, training: bool
) -> None:
    layer = create(client, rate=0.5, data_format="channels_first")["name"]
    x = np.random.default_rng(2).standard_normal((5, 6, 3, 2)).astype(dtype)
    x.reshape(-1)[:3] = [np.nan, -0.0, np.inf]
    for offset, seed in [(0, 1), (3, 1), (0, 2**64 - 1)]:
        numpy_answer = apply_npy(
            client, layer, x, training=training, seed=seed, sample_offset=offset
        )
        onnx_answer = apply_npy(
            client,
            layer,
            x,
            training=training,
            seed=seed,
            sample_offset=offset,
            engine="onnxruntime",
        )
        assert onnx_answer.status_code == 200, onnx_answer.text
        assert onnx_answer.headers["x-seed"] == numpy_answer.headers["x-seed"] == str(seed)
        assert onnx_answer.content == numpy_answer.content


def test_the_json_form_takes_the_engine_in_its_body(client: httpx.Client) -> None:
    layer = create(client, kind="spatial_dropout_1d", rate=0.3, seed=4)["name"]
    body: dict[str, Any] = {
        "layer": layer,
        "training": True,
        "return_mask": True,
        "input": np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8).tolist(),
    }
    numpy_answer = client.post("/apply", json=body).json()
    onnx_answer = client.post("/apply", json={**body, "engine": "onnxruntime"}).json()
    assert onnx_answer == numpy_answer
    assert sum(map(sum, onnx_answer["mask"])) not in (0, 16)  # some kept, some dropped
    inline = {"spec": {"kind": "dropout", "rate": 0.5}, "seed": 3, "training": True}
    inline["input"] = [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
    assert (
        client.post("/apply", json={**inline, "engine": "onnxruntime"}).json()
        == client.post("/apply", json=inline).json()
    )
    stray = client.post("/apply", params={"engine": "onnxruntime"}, json=body)
    assert_problem(stray, 422, "validation_error")
    assert_problem(client.post("/apply", json={**body, "engine": "torch"}), 422, "validation_error")


def test_bfloat16_with_the_onnxruntime_engine_is_refused(client: httpx.Client) -> None:
    layer = create(client, rate=0.5, seed=1)["name"]
    x = np.ones((1, 2, 2, 3), dtype=ml_dtypes.bfloat16)
    answer = apply_npy(client, layer, x, training=True, engine="onnxruntime")
    body = assert_problem(answer, 422, "unsupported_onnx_dtype")
    assert "the numpy engine runs every dtype" in body["detail"]
    assert apply_npy(client, layer, x, training=True).status_code == 200
    json_body = {"layer": layer, "engine": "onnxruntime", "dtype": "bfloat16", "input": [[[[1]]]]}
    assert_problem(client.post("/apply", json=json_body), 422, "unsupported_onnx_dtype")


def test_engine_errors_are_the_kernels(client: httpx.Client) -> None:
    layer = create(client, rate=0.5, seed=1)["name"]
    x = np.ones((2, 3, 4), dtype=np.float32)
    numpy_answer = apply_npy(client, layer, x, training=True)
    onnx_answer = apply_npy(client, layer, x, training=True, engine="onnxruntime")
    assert_problem(onnx_answer, 422, "rank_mismatch")
    assert onnx_answer.json() == numpy_answer.json()


# -- the README's snippet ----------------------------------------------------------------


def readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(re.escape(SNIPPET_MARKER) + r"\n```python\n(.*?)```", readme, flags=re.S)
    assert match, f"README.md has no ```python block after {SNIPPET_MARKER}"
    return match.group(1)


def test_the_readme_snippet_reproduces_the_service_call(
    client: httpx.Client, tmp_path: Path
) -> None:
    snippet = readme_snippet()
    assert len(snippet.strip().splitlines()) <= 10
    layer = create(client, rate=0.5, seed=7)["name"]  # the tour's layer "sd", under a new name
    model = client.get(f"/layers/{layer}/onnx")
    assert model.status_code == 200
    (tmp_path / "sd.onnx").write_bytes(model.content)
    run = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    printed = run.stdout.strip()
    assert f"# {printed}" == snippet.strip().splitlines()[-1]  # the output the README shows
    served = client.post(
        "/apply",
        json={
            "layer": layer,
            "training": True,
            "return_mask": True,
            "input": {
                "shape": [1, 2, 2, 3],
                "dtype": "float32",
                "data": list(range(1, 13)),
            },
        },
    ).json()
    assert printed == f"{served['output']['data']} {served['mask']}"


# -- mask=portable ----------------------------------------------------------------------


def test_a_portable_download_answers_what_apply_answers_in_onnxruntime_and_openvino(
    client: httpx.Client, server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.onnx import runtimes

    layer = create(client, rate=0.3, seed=5, data_format="channels_last")
    answer = client.get(f"/layers/{layer['name']}/onnx", params={"mask": "portable"})
    assert answer.status_code == 200, answer.text
    model = onnx.load_from_string(answer.content)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["mask"] == "portable" and props["seed"] == "5"
    assert "training_mode" not in {t.name for t in model.graph.initializer}
    assert "Dropout" not in {n.op_type for n in nodes(model)}
    x = np.random.default_rng(1).standard_normal((4, 2, 2, 16)).astype(np.float32)
    for training in (True, False):
        expected = load(apply_npy(client, layer["name"], x, training=training, seed=5).content)
        feeds = {"X": x, "training_mode": np.array(training)}
        for runtime in (runtimes.onnxruntime, runtimes.openvino):
            y, _ = runtime(answer.content)(feeds)
            assert y.tobytes() == expected.tobytes(), (training, runtime)
    dropout = client.get(f"/layers/{layer['name']}/onnx").content
    assert {p.key: p.value for p in onnx.load_from_string(dropout).metadata_props}["mask"] == (
        "dropout"
    )
    assert_problem(
        client.get(f"/layers/{layer['name']}/onnx", params={"mask": "random"}),
        422,
        "validation_error",
    )
    monkeypatch.setenv("SPATIAL_DROPOUT_DATABASE_URL", f"sqlite:///{server.database}")
    out = tmp_path / "portable.onnx"
    assert main(["export", layer["name"], "-o", str(out), "--mask", "portable"]) == 0
    assert out.read_bytes() == answer.content


def test_compose_takes_the_mask_form(client: httpx.Client) -> None:
    from tests.onnx.test_compose_portable import hand_built

    layer = create(client, rate=0.3, seed=2, data_format="channels_first")["name"]
    onnx_type = {"content-type": "application/octet-stream"}
    answer = client.post(
        f"/layers/{layer}/compose",
        params={"after": "h", "mask": "portable"},
        content=hand_built(),
        headers=onnx_type,
    )
    assert answer.status_code == 200, answer.text
    from service.compose import read_record

    (inserted,) = read_record(onnx.load_from_string(answer.content))
    assert inserted.mask == "portable" and inserted.dropout is None
    again = client.post(
        f"/layers/{layer}/compose",
        params={"after": "out"},
        content=answer.content,
        headers=onnx_type,
    )
    assert_problem(again, 422, "mixed_mask_forms")
    assert_problem(
        client.post(
            f"/layers/{layer}/compose",
            params={"mask": "portable ", "after": "h"},
            content=hand_built(),
            headers=onnx_type,
        ),
        422,
        "validation_error",
    )

"""The five ONNX runtimes a portable graph is checked on, each behind one ``run`` call.

onnxruntime (CPU), ``onnx.reference``, OpenVINO (CPU, float32 precision hint: its plugin may
otherwise compute float32 in bf16), tract, and onnxruntime-web's WebAssembly build in Node
(``tests/onnx/web``, installed by ``make test`` from its lock file). Each takes a serialized
model and its feeds and answers the graph's outputs in order, as numpy arrays.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

Feeds = Mapping[str, NDArray[Any]]
Runner = Callable[[bytes, Feeds], list[NDArray[Any]]]

WEB_DIR = Path(__file__).parent / "web"


def onnxruntime(model: bytes, feeds: Feeds) -> list[NDArray[Any]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return list(session.run(None, dict(feeds)))


def reference(model: bytes, feeds: Feeds) -> list[NDArray[Any]]:
    from onnx.reference import ReferenceEvaluator

    return [
        np.asarray(out)
        for out in ReferenceEvaluator(onnx.load_from_string(model)).run(None, dict(feeds))
    ]


def openvino(model: bytes, feeds: Feeds) -> list[NDArray[Any]]:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(model, b""), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    results = compiled(dict(feeds))
    return [np.asarray(results[output]) for output in compiled.outputs]


def tract(model: bytes, feeds: Feeds) -> list[NDArray[Any]]:
    import tract as tr

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        path.write_bytes(model)
        loaded = tr.onnx().load(str(path))
    names = [loaded.input_name(i) for i in range(loaded.input_count())]
    for i, name in enumerate(names):  # concrete shapes, as tract is used: it folds what it can
        loaded.set_input_fact(i, _tract_fact(feeds[name]))
    runnable = loaded.into_model().into_runnable()
    return [out.to_numpy() for out in runnable.run([feeds[name] for name in names])]


def _tract_fact(array: NDArray[Any]) -> str:
    dtype = "bool" if array.dtype == np.bool_ else array.dtype.name.replace("float", "f")
    return ",".join([*(str(d) for d in array.shape), dtype])


class WebRunner:
    """A Node process running ``tests/onnx/web/run.mjs``: onnxruntime-web, one model at a time."""

    def __init__(self) -> None:
        node = shutil.which("node")
        if node is None or not (WEB_DIR / "node_modules" / "onnxruntime-web").is_dir():
            raise RuntimeError(
                "onnxruntime-web is not installed: run `make test` (npm ci in tests/onnx/web)"
            )
        self._folder = tempfile.TemporaryDirectory()
        self._process = subprocess.Popen(
            [node, str(WEB_DIR / "run.mjs")],
            cwd=WEB_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lock = threading.Lock()
        self._count = 0

    def __call__(self, model: bytes, feeds: Feeds) -> list[NDArray[Any]]:
        with self._lock:
            self._count += 1
            path = Path(self._folder.name) / f"model{self._count}.onnx"
            path.write_bytes(model)
            request = {"model": str(path), "feeds": {k: _encode(v) for k, v in feeds.items()}}
            assert self._process.stdin is not None and self._process.stdout is not None
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            answer = json.loads(self._process.stdout.readline())
            path.unlink()
        if "error" in answer:
            raise RuntimeError(f"onnxruntime-web: {answer['error']}")
        return [_decode(out) for out in answer["outputs"]]

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=30)
        self._folder.cleanup()


_WEB_DTYPES = {"float16": np.uint16}  # onnxruntime-web holds float16 tensors as their bits


def _encode(array: NDArray[Any]) -> dict[str, Any]:
    data = np.ascontiguousarray(array)
    return {
        "dtype": "bool" if data.dtype == np.bool_ else data.dtype.name,
        "shape": list(data.shape),
        "data": base64.b64encode(data.tobytes()).decode(),
    }


def _decode(out: Mapping[str, Any]) -> NDArray[Any]:
    dtype = np.dtype(np.bool_ if out["dtype"] == "bool" else out["dtype"])
    raw = base64.b64decode(out["data"])
    return np.frombuffer(raw, dtype=dtype).reshape(out["shape"]).copy()


def web_runner() -> Iterator[WebRunner]:
    """For a fixture to ``yield from``: one Node process, closed afterwards."""
    runner = WebRunner()
    try:
        yield runner
    finally:
        runner.close()


PYTHON_RUNTIMES: dict[str, Runner] = {
    "onnxruntime": onnxruntime,
    "onnx.reference": reference,
    "openvino": openvino,
    "tract": tract,
}

"""The five ONNX runtimes a portable graph is checked on, each behind one ``load`` call.

onnxruntime (CPU), ``onnx.reference``, OpenVINO (CPU, float32 precision hint: its plugin may
otherwise compute float32 in bf16), tract (with the feeds' concrete shapes, as it is used:
it folds what it can), and onnxruntime-web's WebAssembly build in Node (``tests/onnx/web``,
installed by ``make test`` from its lock file). ``load(model)`` opens a session once;
calling it with feeds answers the graph's outputs in order, as numpy arrays.
"""

from __future__ import annotations

import base64
import hashlib
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
Session = Callable[[Feeds], list[NDArray[Any]]]
Loader = Callable[[bytes], Session]

WEB_DIR = Path(__file__).parent / "web"


def onnxruntime(model: bytes) -> Session:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return lambda feeds: list(session.run(None, dict(feeds)))


def reference(model: bytes) -> Session:
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(onnx.load_from_string(model))

    def run(feeds: Feeds) -> list[NDArray[Any]]:
        with np.errstate(all="ignore"):  # numpy's overflow to inf is the IEEE answer here
            return [np.asarray(out) for out in evaluator.run(None, dict(feeds))]

    return run


def openvino(model: bytes) -> Session:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(model, b""), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )

    def run(feeds: Feeds) -> list[NDArray[Any]]:
        results = compiled(dict(feeds))
        return [np.asarray(results[output]) for output in compiled.outputs]

    return run


def tract(model: bytes) -> Session:
    import tract as tr

    # tract will not unify a symbolic dim of a value_info hint with a concrete input size:
    # the shapes follow from the inputs' facts alone.
    proto = onnx.load_from_string(model)
    del proto.graph.value_info[:]
    model = proto.SerializeToString()
    runnables: dict[tuple[Any, ...], Any] = {}

    def run(feeds: Feeds) -> list[NDArray[Any]]:
        key = tuple((name, a.shape, a.dtype.str) for name, a in feeds.items())
        if key not in runnables:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "model.onnx"
                path.write_bytes(model)
                loaded = tr.onnx().load(str(path))
            names = [loaded.input_name(i) for i in range(loaded.input_count())]
            for i, name in enumerate(names):
                loaded.set_input_fact(i, _tract_fact(feeds[name]))
            for i in range(loaded.output_count()):  # inferred from the inputs' shapes
                loaded.set_output_fact(i, None)
            runnables[key] = (names, loaded.into_model().into_runnable())
        names, runnable = runnables[key]
        return [out.to_numpy() for out in runnable.run([feeds[name] for name in names])]

    return run


def _tract_fact(array: NDArray[Any]) -> str:
    dtype = "bool" if array.dtype == np.bool_ else array.dtype.name.replace("float", "f")
    dtype = dtype.replace("uint", "u").replace("int", "i")
    return ",".join([*(str(d) for d in array.shape), dtype])


class WebRunner:
    """A Node process running ``tests/onnx/web/run.mjs``: onnxruntime-web, which keeps the
    session of the last model it ran."""

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

    def __call__(self, model: bytes) -> Session:
        path = Path(self._folder.name) / f"{hashlib.sha256(model).hexdigest()}.onnx"
        if not path.exists():
            path.write_bytes(model)
        return lambda feeds: self._run(path, feeds)

    def _run(self, path: Path, feeds: Feeds) -> list[NDArray[Any]]:
        request = {"model": str(path), "feeds": {k: _encode(v) for k, v in feeds.items()}}
        with self._lock:
            assert self._process.stdin is not None and self._process.stdout is not None
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
            answer = json.loads(self._process.stdout.readline())
        if "error" in answer:
            raise RuntimeError(f"onnxruntime-web: {answer['error']}")
        return [_decode(out) for out in answer["outputs"]]

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=30)
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._folder.cleanup()


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


PYTHON_RUNTIMES: dict[str, Loader] = {
    "onnxruntime": onnxruntime,
    "onnx.reference": reference,
    "openvino": openvino,
    "tract": tract,
}

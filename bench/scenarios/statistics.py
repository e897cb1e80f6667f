"""Peak RSS of a fresh server computing Monte Carlo statistics: T=256 samples of a model whose
output is 16 MiB per pass, answered as mean and variance, against the 4 GiB the samples
themselves would take. The statistics are accumulated chunk by chunk, never holding T samples."""

from __future__ import annotations

import time

import numpy as np
from onnx import TensorProto, helper

from bench.common import MIB, SEED, Context, log
from bench.procs import LAYER
from bench.scenarios.rss import reset_peak
from bench.stats import Row, Stat, Target, compare
from harness.process import Child, status_kib
from service.client import Client
from service.uncertainty.sampler import CHUNK_BYTES

SAMPLES = 256
SHAPE = (1, 1024, 1024, 4)  # float32, channels last: 16 MiB per pass


def relu_model() -> bytes:
    """One Relu on a channels-last image with a free batch axis."""
    dims: list[int | str] = ["batch", *SHAPE[1:]]
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["features"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def run(ctx: Context) -> list[Row]:
    x = np.random.default_rng(SEED).standard_normal(SHAPE, np.float32)
    per_pass = x.nbytes
    growth, samples_bytes = Stat(), Stat()
    server: Child | None = None
    try:
        for attempt in range(ctx.repeat):
            server = ctx.procs.service()
            url = f"http://127.0.0.1:{server.port}"
            with Client(url, timeout=600) as sd:
                composed = sd.compose(LAYER, relu_model(), seed=SEED).model
                sd.put_model("relu", composed)
                # Warm the code paths (and onnxruntime's session) on a small call.
                sd.infer("relu", {"x": x}, mc_samples=2, mc_statistics=True)
                time.sleep(0.2)
                rss = status_kib(server.pid, "VmRSS")
                if not reset_peak(server.pid):
                    raise RuntimeError("cannot reset VmHWM on this kernel: no peak to measure")
                start = time.perf_counter()
                answer = sd.infer("relu", {"x": x}, mc_samples=SAMPLES, mc_statistics=True)
                seconds = time.perf_counter() - start
                peak = status_kib(server.pid, "VmHWM")
            if answer.samples_used != SAMPLES or answer.outputs["features_mean"].shape != SHAPE:
                raise RuntimeError(f"unexpected answer: {answer.parameters}")
            log(
                f"statistics run {attempt + 1}/{ctx.repeat}: idle {rss / 1024:.0f} MiB, "
                f"peak {peak / 1024:.0f} MiB, {seconds:.1f} s for T={SAMPLES}"
            )
            growth.add((peak - rss) * 1024)
            samples_bytes.add(SAMPLES * per_pass)
            ctx.procs.stop(server)
            server = None
    finally:
        if server is not None:
            ctx.procs.stop(server)
    chunk = max(1, CHUNK_BYTES // per_pass)
    return [
        compare(
            f"peak RSS above idle, mean and variance of T={SAMPLES} passes of 16 MiB "
            f"(chunks of {chunk} passes)",
            growth,
            f"the {SAMPLES} samples",
            samples_bytes,
            higher_is_better=False,
            what="x the samples",
            target=Target(0.125, at_least=False),
            show=lambda s: s.show(1 / MIB, "MiB"),
        )
    ]

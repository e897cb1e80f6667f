"""Monte Carlo dropout on a stored model: T=32 samples of a batch of 4 through the data plane's
runner (masks drawn by the kernel, one batched onnxruntime run), against one onnxruntime run
of the plain model on a batch of T*4, in process, same threads."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np

from bench.common import SEED, Context, log
from bench.stats import Row, Stat, Target, compare, timed
from service.compose import compose
from service.core.config import DataFormat, Kind
from service.layers.resolve import ResolvedSpec
from service.models.serving import Runner, _session

SAMPLES = 32
BATCH = 4
SPATIAL = 64
THREADS = 2  # the default SPATIAL_DROPOUT_MODEL_THREADS
#: After the first two stages of resnet18 (the TorchScript exporter's tensor names).
AFTER = ("/layer1/layer1.1/relu_1/Relu_output_0", "/layer2/layer2.1/relu_1/Relu_output_0")


def resnet18() -> bytes:
    import torch
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.resnet18(weights=None).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(BATCH, 3, SPATIAL, SPATIAL),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buffer.getvalue()


def run(ctx: Context) -> list[Row]:
    log("monte carlo: exporting and composing resnet18")
    plain = resnet18()
    layer = ResolvedSpec(
        kind=Kind.SPATIAL_2D,
        rate=0.1,
        data_format=DataFormat.CHANNELS_FIRST,
        batch_size=None,
        name="mc",
        trainable=True,
        seed=None,
        dtype=None,
        noise_shape=None,
    )
    composed = compose(plain, layer, after=AFTER, seed=SEED, max_nodes=100_000)
    runner = Runner(composed, max_nodes=100_000, intra_op_threads=THREADS)
    session = _session(plain, THREADS)
    x = np.random.default_rng(3).standard_normal((BATCH, 3, SPATIAL, SPATIAL), np.float32)
    big = np.concatenate([x] * SAMPLES)

    def monte_carlo() -> None:
        runner.run(
            {"image": x},
            training=True,
            seed=SEED,
            sample_offset=0,
            samples=SAMPLES,
            max_elements=2**31,
        )

    def plain_run() -> None:
        session.run(["logits"], {"image": big})

    for fn in (monte_carlo, plain_run):  # warm up
        fn()
    inner = max(1, math.ceil(0.2 / timed(plain_run)))
    mc, limit = Stat(), Stat()
    for _ in range(ctx.repeat):
        limit.add(timed(plain_run, inner))
        mc.add(timed(monte_carlo, inner))
    return [
        compare(
            f"Monte Carlo resnet18 {SPATIAL}x{SPATIAL}, T={SAMPLES} x batch {BATCH}, K=2",
            mc,
            f"onnxruntime, plain model, batch {SAMPLES * BATCH}",
            limit,
            higher_is_better=False,
            what="x the plain run",
            target=Target(1.25, at_least=False),
        )
    ]

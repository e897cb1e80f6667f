"""One 128 MiB .npy /apply in training mode against the same request in inference mode.

Inference is the identity: the server reads the body and sends it back. Training adds the
mask and one pass over the tensor in place, so the ratio is what dropout itself costs on top
of moving the bytes, in each dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.client import HttpConn
from bench.common import (
    F32_SHAPES,
    MIB,
    NPY,
    SEED,
    Context,
    check_npy,
    layer_config,
    log,
    npy_bytes,
    tensor,
)
from bench.procs import LAYER
from bench.stats import Row, Stat, Target, compare
from harness.process import HOST
from service.core import kernel
from service.core.config import DataFormat

TARGET = Target(1.15, at_least=False)


def run(ctx: Context) -> list[Row]:
    service = ctx.service()
    config = layer_config(DataFormat.CHANNELS_LAST)
    rows: list[Row] = []
    with HttpConn(HOST, service.port) as http:
        for dtype in (np.float32, np.float16):
            n, h, w, c = F32_SHAPES[128 * MIB]
            shape = (n * 4 // np.dtype(dtype).itemsize, h, w, c)
            x = tensor(shape, dtype)
            name = np.dtype(dtype).name
            log(f"modes {name} {shape}: building the body")
            body = npy_bytes(x)
            expected = kernel.apply(config, x, training=True, seed=SEED).output

            def post(training: bool, body: bytes = body) -> Any:
                flag = "true" if training else "false"
                target = f"/apply?layer={LAYER}&training={flag}&seed={SEED}"
                return http.request("POST", target, body, {"Content-Type": NPY})

            check_npy(post(True), expected, f"POST /apply (.npy) {name} training")
            check_npy(post(False), x, f"POST /apply (.npy) {name} inference")
            del expected, x
            training, inference = Stat(), Stat()
            for attempt in range(ctx.repeat):
                log(f"modes {name}: run {attempt + 1}/{ctx.repeat}")
                inference.add(post(False).seconds)
                training.add(post(True).seconds)
            rows.append(
                compare(
                    f"one 128 MiB .npy /apply {name}, training mode",
                    training,
                    "the same request, inference mode",
                    inference,
                    higher_is_better=False,
                    what="x inference",
                    target=TARGET,
                )
            )
            del body
    return rows

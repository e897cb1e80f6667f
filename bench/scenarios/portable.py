"""The ONNX export of a SpatialDropout2D layer in its two mask forms, on a training run in
onnxruntime (CPU), in process: the portable form (the keep mask computed in the graph from
int32 ops, the quotient through ``service.onnx.division``) against the Dropout form.

Each form gets one session (``ORT_ENABLE_ALL``, the service's model threads), made once and
checked against the kernel on its first run (the Dropout form's session moves its seed on each
run after that, which changes the mask but not the work). Rate 0.5 has a power-of-two keep
factor; rate 0.3 takes the portable graph's exact-division path.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.typing import NDArray

from bench.common import (
    F32_SHAPES,
    SEED,
    Context,
    check,
    layer_config,
    log,
    size_label,
    tensor,
)
from bench.scenarios.monte_carlo import THREADS
from bench.stats import Row, Stat, Target, compare, timed
from service.core import kernel, rng
from service.core.config import DataFormat, DropoutConfig
from service.models.serving import _session
from service.onnx.graph import TRAINING_MODE, GraphSpec, build_model
from service.onnx.opsets import DEFAULT_OPSET

RATES = (0.5, 0.3)
TARGET = Target(1.1, at_least=False)


def run(ctx: Context) -> list[Row]:
    """Per case, session.run of the portable form against the Dropout form; the ratio is
    portable time / Dropout time (1.0: no cost for portability)."""
    rows: list[Row] = []
    # A 4 MiB run is a few ms, and two intra-op threads on a small machine make single runs
    # vary by 2x: each figure averages about 0.2 s of runs, as the Monte Carlo section's do.
    min_sample = 0.05 if ctx.args.quick else 0.2
    for nbytes, shape in F32_SHAPES.items():
        x = tensor(shape)
        assert x.nbytes == nbytes, (x.nbytes, nbytes)
        for rate in RATES:
            config = dataclasses.replace(layer_config(DataFormat.CHANNELS_LAST), rate=rate)
            name = f"{config.kind.value} rate {rate:g}, float32 channels_last {size_label(nbytes)}"
            log(f"portable {name} {shape}")
            rows.append(_case(ctx, name, config, x, min_sample))
    return rows


def _case(
    ctx: Context,
    name: str,
    config: DropoutConfig,
    x: NDArray[np.float32],
    min_sample: float,
) -> Row:
    feeds = {"X": x, TRAINING_MODE: np.array(True)}
    expected = kernel.apply(config, x, training=True, seed=SEED).output
    runs = {}
    for form in ("dropout", "portable"):
        spec = GraphSpec(config, x.ndim, "float32", DEFAULT_OPSET, rng.mix_seed(SEED), form)
        session = _session(build_model(spec).SerializeToString(), THREADS)
        got = session.run(["Y"], feeds)[0]  # the warm-up, and the first run's answer
        check(np.array_equal(got, expected), f"onnxruntime, {form} form, {name}")
        runs[form] = lambda session=session: session.run(["Y"], feeds)
    del expected, got
    inner = max(1, math.ceil(min_sample / timed(runs["dropout"])))
    stats = {form: Stat() for form in runs}
    for _ in range(ctx.repeat):
        for form, fn in runs.items():
            stats[form].add(timed(fn, inner))
    return compare(
        f"ONNX portable mask form, {name}: session.run",
        stats["portable"],
        "the Dropout mask form, same session options",
        stats["dropout"],
        higher_is_better=False,
        what="x the Dropout form",
        target=TARGET,
    )

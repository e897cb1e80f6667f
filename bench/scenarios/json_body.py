"""JSON /apply against orjson encoding and decoding the same tensor in process."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from bench.client import HttpConn
from bench.common import F32_SHAPES, JSON, MIB, SEED, Context, check, layer_config, log, tensor
from bench.procs import LAYER
from bench.stats import Row, Stat, Target, compare, timed
from harness.process import HOST
from service.core import kernel
from service.core.config import DataFormat


def run(ctx: Context) -> list[Row]:
    """JSON /apply of 4 MiB float32 (nested and flat) against orjson encode+decode of the
    same tensor in process; the ratio is HTTP time / orjson time."""
    service = ctx.service()
    rows: list[Row] = []
    shape = F32_SHAPES[4 * MIB]
    x = tensor(shape)
    expected = kernel.apply(
        layer_config(DataFormat.CHANNELS_LAST), x, training=True, seed=SEED
    ).output
    opt = orjson.OPT_SERIALIZE_NUMPY
    with HttpConn(HOST, service.port) as http:
        for form, value in (("nested", x), ("flat", x.reshape(-1))):
            log(f"json {form} 4 MiB float32 {shape}")
            wire: Any = (
                value
                if form == "nested"
                else {
                    "shape": list(shape),
                    "dtype": "float32",
                    "data": value,
                }
            )
            body = orjson.dumps(
                {"layer": LAYER, "training": True, "seed": SEED, "input": wire}, option=opt
            )

            def post(body: bytes = body) -> Any:
                return http.request("POST", "/apply", body, {"Content-Type": JSON})

            def orjson_round_trip(value: NDArray[Any] = value) -> None:
                orjson.loads(orjson.dumps(value, option=opt))

            answer = post()
            check(answer.status == 200, f"JSON /apply ({form}): {bytes(answer.body[:300])!r}")
            output = orjson.loads(answer.body)["output"]
            got = np.asarray(output if form == "nested" else output["data"], dtype=np.float32)
            check(np.array_equal(got.reshape(shape), expected), f"JSON /apply ({form})")
            orjson_round_trip()
            took, limit = Stat(), Stat()
            for _ in range(ctx.repeat):
                took.add(post().seconds)
                limit.add(timed(orjson_round_trip))
            rows.append(
                compare(
                    f"JSON /apply 4 MiB float32, {form} ({len(body) / MIB:.1f} MiB body)",
                    took,
                    f"orjson dumps+loads of the tensor ({form})",
                    limit,
                    higher_is_better=False,
                    what="x orjson",
                    target=Target(1.5, at_least=False),
                )
            )
    return rows

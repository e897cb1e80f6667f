"""Binary /apply (.npy) and V2 binary infer against a TCP echo of the same bytes."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from bench.client import EchoConn, HttpConn
from bench.common import (
    F32_SHAPES,
    MIB,
    NPY,
    SEED,
    Context,
    check,
    check_npy,
    check_v2,
    layer_config,
    log,
    npy_bytes,
    size_label,
    tensor,
)
from bench.procs import LAYER
from bench.stats import Row, Stat, Target, compare, timed
from harness.process import HOST
from service.core import kernel
from service.core.config import DataFormat


def v2_body(x: NDArray[Any]) -> tuple[bytes, int]:
    """A binary infer request as tritonclient builds it: JSON header, then raw bytes."""
    parameters = {"training": True, "seed": SEED}
    try:
        import tritonclient.http as triton
    except ImportError:  # the same message, built by hand
        raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
                "parameters": parameters,
            }
        )
        return header + raw, len(header)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = triton.InferRequestedOutput("output", binary_data=True)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [inp], outputs=[out], parameters=parameters
    )
    return bytes(body), int(json_size or len(body))


def run(ctx: Context) -> list[Row]:
    """Binary /apply (.npy) and /v2 binary infer against a TCP echo of the same bytes and the
    in-process kernel; ratios are HTTP time / limit time."""
    service = ctx.service()
    log("starting the TCP echo server")
    echo_proc = ctx.procs.tcp_echo()
    rows: list[Row] = []
    config = layer_config(DataFormat.CHANNELS_LAST)
    npy_target = f"/apply?layer={LAYER}&training=true&seed={SEED}"
    v2_target = f"/v2/models/{LAYER}/infer"
    with HttpConn(HOST, service.port) as http, EchoConn(HOST, echo_proc.port) as echo:
        for nbytes, shape in F32_SHAPES.items():
            label = size_label(nbytes)
            log(f"http {label} float32 {shape}: building bodies")
            x = tensor(shape)
            expected = kernel.apply(config, x, training=True, seed=SEED).output.copy()
            out = np.empty_like(x)
            npy = npy_bytes(x)
            v2, v2_json = v2_body(x)
            npy_headers = {"Content-Type": NPY}
            v2_headers = {
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(v2_json),
            }

            def apply_npy(body: bytes = npy, headers: dict[str, str] = npy_headers) -> Any:
                return http.request("POST", npy_target, body, headers)

            def infer_v2(body: bytes = v2, headers: dict[str, str] = v2_headers) -> Any:
                return http.request("POST", v2_target, body, headers)

            def run_kernel(x: NDArray[Any] = x, out: NDArray[Any] = out) -> None:
                kernel.apply(config, x, training=True, seed=SEED, out=out)

            # Warm up and check every answer once, untimed.
            check_npy(apply_npy(), expected, "POST /apply (.npy)")
            check_v2(infer_v2(), expected, "POST /v2 infer (binary)")
            for body in (npy, v2):
                view, _ = echo.echo(body)
                check(view == memoryview(body), "the TCP echo")
            run_kernel()
            stats = {k: Stat() for k in ("npy", "echo_npy", "v2", "echo_v2", "kernel")}
            for run in range(ctx.repeat):
                log(f"http {label}: run {run + 1}/{ctx.repeat}")
                stats["echo_npy"].add(echo.echo(npy)[1])
                stats["npy"].add(apply_npy().seconds)
                stats["echo_v2"].add(echo.echo(v2)[1])
                stats["v2"].add(infer_v2().seconds)
                stats["kernel"].add(timed(run_kernel))
            bound = 1.5 if nbytes >= 128 * MIB else 2.0
            for key, what, extra in (("npy", "binary /apply (.npy)", ""), ("v2", "V2 infer", "")):
                name = f"{what} {label} float32{extra}"
                rows.append(
                    compare(
                        name,
                        stats[key],
                        f"TCP echo of the same {len(npy if key == 'npy' else v2)} B",
                        stats[f"echo_{key}"],
                        higher_is_better=False,
                        what="x echo",
                        target=Target(bound, at_least=False),
                    )
                )
                rows.append(
                    compare(
                        name,
                        stats[key],
                        "in-process kernel, out= buffer",
                        stats["kernel"],
                        higher_is_better=False,
                        what="x kernel",
                    )
                )
            del x, out, npy, v2, expected
    ctx.procs.stop(echo_proc)
    return rows

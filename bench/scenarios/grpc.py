"""The Open Inference Protocol over gRPC beside the REST binary path, in the same run.

Both go to one service process; both clients are Python in this process (grpcio's channel;
bench.client's raw-socket HTTP/1.1), so a ratio compares the servers' paths, not a C load
generator with a Python one. Large calls are timed one at a time; small ones in a closed
loop over 8 concurrent streams (8 threads on one gRPC channel: HTTP/2 multiplexes them) and
8 keep-alive HTTP connections. A second limit for the large calls: a bare grpcio server
echoing the same request bytes (bench/grpc_echo.py), the floor of any grpcio service.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from numpy.typing import NDArray
from tritonclient.grpc import service_pb2

from bench.client import HttpConn
from bench.common import (
    F32_SHAPES,
    SEED,
    SMALL_SHAPE,
    Context,
    check,
    check_v2,
    layer_config,
    log,
    size_label,
    tensor,
)
from bench.procs import LAYER
from bench.scenarios.binary import v2_body
from bench.stats import Row, Stat, Target, compare, timed
from harness.process import HOST, free_port
from service.core import kernel
from service.core.config import DataFormat

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAMS = 8
#: gRPC time / REST time (rates: REST / gRPC) at most this, at every size.
TARGET = Target(1.5, at_least=False)


def grpc_body(x: NDArray[Any]) -> bytes:
    """A ModelInfer request as tritonclient.grpc builds it: the input raw."""
    request = service_pb2.ModelInferRequest(model_name=LAYER)
    request.parameters["training"].bool_param = True
    request.parameters["seed"].int64_param = SEED
    request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype="<f4").tobytes())
    data: bytes = request.SerializeToString()
    return data


def check_grpc(answer: bytes, expected: NDArray[Any]) -> None:
    response = service_pb2.ModelInferResponse.FromString(answer)
    got = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    check(np.array_equal(got.reshape(expected.shape), expected), "gRPC ModelInfer")


def closed_loop(workers: list[Callable[[], object]], seconds: float) -> float:
    """Requests per second of ``workers`` each calling in a loop for ``seconds``."""
    counts = [0] * len(workers)
    stop = threading.Event()

    def loop(index: int) -> None:
        while not stop.is_set():
            workers[index]()
            counts[index] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(workers))]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    stop.wait(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


def run(ctx: Context) -> list[Row]:
    """gRPC ModelInfer against REST's binary V2 infer on the same service: 4 and 128 MiB
    float32 calls, and small calls at 8 concurrent streams."""
    grpc_port = free_port()
    log("starting spatial-dropout serve with gRPC (1 worker)")
    service = ctx.procs.service(grpc_port=grpc_port)
    log("starting the grpcio echo server")
    echo_proc = ctx.procs.grpc_echo()
    rows: list[Row] = []
    config = layer_config(DataFormat.CHANNELS_LAST)
    target = f"/v2/models/{LAYER}/infer"
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with (
        HttpConn(HOST, service.port) as http,
        grpc.insecure_channel(f"{HOST}:{grpc_port}", options=options) as channel,
        grpc.insecure_channel(f"{HOST}:{echo_proc.port}", options=options) as echo_channel,
    ):
        infer = channel.unary_unary(INFER)
        echo = echo_channel.unary_unary(INFER)
        for nbytes, shape in F32_SHAPES.items():
            label = size_label(nbytes)
            log(f"grpc {label} float32 {shape}: building bodies")
            x = tensor(shape)
            expected = kernel.apply(config, x, training=True, seed=SEED).output.copy()
            rest, headers = v2_request(x)
            body = grpc_body(x)
            check_v2(http.request("POST", target, rest, headers), expected, "REST V2 infer")
            check_grpc(infer(body, timeout=600), expected)
            check(echo(body, timeout=600) == body, "the grpcio echo")
            by_rest, by_grpc, by_echo = Stat(), Stat(), Stat()
            for run in range(ctx.repeat):
                log(f"grpc {label}: run {run + 1}/{ctx.repeat}")
                by_rest.add(http.request("POST", target, rest, headers).seconds)
                by_grpc.add(timed(lambda body=body: infer(body, timeout=600)))
                by_echo.add(timed(lambda body=body: echo(body, timeout=600)))
            rows.append(
                compare(
                    f"gRPC ModelInfer {label} float32 (raw contents)",
                    by_grpc,
                    f"grpcio echo of the same {len(body)} B",
                    by_echo,
                    higher_is_better=False,
                    what="x echo",
                )
            )
            rows.append(
                compare(
                    f"gRPC ModelInfer {label} float32 (raw contents)",
                    by_grpc,
                    "REST V2 binary infer, same tensor",
                    by_rest,
                    higher_is_better=False,
                    what="x REST",
                    target=TARGET,
                )
            )
            del x, expected, rest, body
        rows.append(small(ctx, service.port, infer, config))
    ctx.procs.stop(echo_proc)
    ctx.procs.stop(service)
    return rows


def v2_request(x: Any) -> tuple[bytes, dict[str, str]]:
    """The REST V2 binary body of ``x`` and the headers that frame it."""
    rest, rest_json = v2_body(x)
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(rest_json),
    }
    return rest, headers


def small(ctx: Context, port: int, infer: Any, config: Any) -> Row:
    x = tensor(SMALL_SHAPE)
    expected = kernel.apply(config, x, training=True, seed=SEED).output.copy()
    rest, headers = v2_request(x)
    body = grpc_body(x)
    check_grpc(infer(body, timeout=60), expected)
    conns = [HttpConn(HOST, port) for _ in range(STREAMS)]
    try:
        check_v2(
            conns[0].request("POST", "/v2/models/bench/infer", rest, headers), expected, "REST"
        )
        rest_calls = [
            (lambda c=c: c.request("POST", f"/v2/models/{LAYER}/infer", rest, headers))
            for c in conns
        ]
        grpc_calls = [(lambda: infer(body, timeout=60)) for _ in range(STREAMS)]
        by_rest, by_grpc = Stat(), Stat()
        for run in range(ctx.repeat):
            log(f"grpc small, {STREAMS} streams: run {run + 1}/{ctx.repeat}")
            by_rest.add(closed_loop(rest_calls, ctx.args.duration))
            by_grpc.add(closed_loop(grpc_calls, ctx.args.duration))
    finally:
        for conn in conns:
            conn.close()
    # Rates: the ratio is REST req/s over gRPC req/s, so at most 1.5 is the same goal.
    return compare(
        f"gRPC ModelInfer small {'x'.join(map(str, SMALL_SHAPE))}, {STREAMS} streams: req/s",
        by_grpc,
        f"REST V2 binary infer, {STREAMS} keep-alive connections",
        by_rest,
        higher_is_better=True,
        what="REST/gRPC req/s",
        target=TARGET,
        show=lambda s: s.show(1, "req/s"),
    )

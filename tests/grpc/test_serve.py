"""gRPC in ``spatial-dropout serve``: SIGTERM lets an in-flight call finish, and with
``--workers`` every worker process serves gRPC on the one port."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2

from harness.process import free_port
from tests.api.helpers import create
from tests.conftest import Server

INFER = "/inference.GRPCInferenceService/ModelInfer"


def request(x: np.ndarray) -> bytes:
    message = service_pb2.ModelInferRequest(model_name="sd")
    message.parameters["seed"].int64_param = 3
    message.parameters["training"].bool_param = True
    message.inputs.add(name="input", datatype="FP32", shape=x.shape)
    message.raw_input_contents.append(x.tobytes())
    data: bytes = message.SerializeToString()
    return data


def refuses_http(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=1)
    except httpx.TransportError:
        return True
    return False


def refuses_grpc(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=1)
        except grpc.RpcError:
            return True
    return False


def test_sigterm_lets_an_in_flight_call_finish_then_exits_0(tmp_path: Path) -> None:
    server = Server(tmp_path / "drain.sqlite3", grpc_port=free_port()).start()
    assert server.process is not None
    with httpx.Client(base_url=server.url, timeout=30) as http:
        create(http, name="sd", seed=3)
    x = np.ones((2, 4, 4, 3), dtype=np.float32)
    release = threading.Event()

    def held() -> Iterator[bytes]:
        release.wait(timeout=60)  # the message only once the server has been told to stop
        yield request(x)

    with grpc.insecure_channel(server.grpc_target) as channel, ThreadPoolExecutor(1) as pool:
        # The call opens at once; its message waits for the release.
        call = channel.stream_unary(INFER)
        future = pool.submit(call, held(), timeout=60)
        # A call that opened after this one answered proves the first one is open too.
        triton.InferenceServerClient(server.grpc_target).is_server_live()
        server.process.send_signal(signal.SIGTERM)
        # HTTP stops first, then gRPC takes no new call: only then is the message sent.
        for _ in range(400):
            if refuses_http(server.url) and refuses_grpc(server.grpc_target):
                break
            time.sleep(0.05)  # a bounded wait; nothing is timed
        else:
            raise AssertionError("the server never stopped taking calls")
        release.set()
        answer = service_pb2.ModelInferResponse.FromString(future.result())
    assert answer.model_name == "sd"
    assert answer.parameters["seed"].int64_param == 3
    assert server.process.wait(timeout=60) == 0


def listeners(port: int) -> int:
    """Sockets listening on ``port`` (any address), as the kernel lists them."""
    found = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            found += state == "0A" and int(local.rsplit(":", 1)[1], 16) == port
    return found


def test_every_worker_serves_grpc(tmp_path: Path) -> None:
    env = {"SPATIAL_DROPOUT_WORKERS": "2"}
    with Server(tmp_path / "workers.sqlite3", env=env, grpc_port=free_port()) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            create(http, name="sd", seed=3)
        # One socket per worker, sharing the port (/readyz answered when one worker was up).
        for _ in range(400):
            if listeners(server.grpc_port) == 2:
                break
            time.sleep(0.05)
        assert listeners(server.grpc_port) == 2
        x = np.ones((1, 2, 2, 2), dtype=np.float32)
        answers = set()
        for _ in range(24):  # a fresh connection each time: the kernel picks a worker
            with grpc.insecure_channel(server.grpc_target) as channel:
                data = channel.unary_unary(INFER)(request(x), timeout=30)
            answers.add(service_pb2.ModelInferResponse.FromString(data).raw_output_contents[0])
        assert len(answers) == 1  # every worker gives the same answer
        metrics = httpx.get(f"{server.url}/metrics").text
        line = 'spatial_dropout_grpc_requests_total{code="OK",method="ModelInfer"}'
        counts = [float(row.split()[-1]) for row in metrics.splitlines() if row.startswith(line)]
        assert counts == [24.0]  # counted across both worker processes

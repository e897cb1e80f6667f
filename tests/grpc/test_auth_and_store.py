"""Bearer tokens in the ``authorization`` metadata, and a store that is down: the statuses
tritonclient.grpc sees, with the messages REST gives."""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from harness.process import free_port
from tests.api.helpers import create
from tests.conftest import Server

TOKEN = "grpc-secret"


def infer(client: triton.InferenceServerClient, layer: str, **kwargs: object) -> object:
    x = np.ones((1, 2, 2, 2), dtype=np.float32)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(layer, [inp], **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"SPATIAL_DROPOUT_API_TOKENS": f"other,{TOKEN}", "SPATIAL_DROPOUT_AUTH_READS": "true"}
    database = tmp_path_factory.mktemp("grpc-auth") / "layers.sqlite3"
    with Server(database, env=env, grpc_port=free_port()) as server:
        with httpx.Client(
            base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as http:
            create(http, name="sd")
        yield server


def status_of(call: object) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()  # type: ignore[operator]
    return caught.value.status(), caught.value.message()


def test_tokens_guard_infer_and_reads(guarded: Server) -> None:
    with triton.InferenceServerClient(guarded.grpc_target) as client:
        rest = httpx.post(f"{guarded.url}/v2/models/sd/infer", json={}).json()["error"]
        assert status_of(lambda: infer(client, "sd")) == ("StatusCode.UNAUTHENTICATED", rest)
        wrong = {"authorization": "Bearer nope"}
        status, message = status_of(lambda: infer(client, "sd", headers=wrong))
        assert status == "StatusCode.PERMISSION_DENIED"
        assert (
            message
            == httpx.post(
                f"{guarded.url}/v2/models/sd/infer",
                json={},
                headers={"Authorization": "Bearer nope"},
            ).json()["error"]
        )
        malformed = {"authorization": TOKEN}  # no scheme
        status, _ = status_of(lambda: infer(client, "sd", headers=malformed))
        assert status == "StatusCode.UNAUTHENTICATED"
        status, _ = status_of(lambda: client.get_model_metadata("sd"))
        assert status == "StatusCode.UNAUTHENTICATED"  # AUTH_READS: reads need one too
        right = {"authorization": f"Bearer {TOKEN}"}
        assert infer(client, "sd", headers=right) is not None
        assert client.get_model_metadata("sd", headers=right).name == "sd"
        assert client.is_server_live() and client.is_server_ready()  # probes stay open


def test_a_store_that_is_down_is_unavailable(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.postgres import PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pg = PostgresServer(bindir).start()
    try:
        env = {
            "SPATIAL_DROPOUT_DATABASE_URL": pg.new_database(),
            "SPATIAL_DROPOUT_LAYER_CACHE_SECONDS": "0",
        }
        database = tmp_path_factory.mktemp("grpc-store") / "log.sqlite3"
        with (
            Server(database, env=env, grpc_port=free_port()) as server,
            httpx.Client(base_url=server.url, timeout=30) as http,
        ):
            create(http, name="sd")
            with triton.InferenceServerClient(server.grpc_target) as client:
                assert infer(client, "sd") is not None
                pg.stop()
                # What this replica served, it goes on serving; a name it never saw it cannot
                # resolve while the store is away.
                assert infer(client, "sd") is not None
                status, message = status_of(lambda: infer(client, "never-seen"))
                assert status == "StatusCode.UNAVAILABLE"
                rest = http.post("/v2/models/never-seen/infer", json={})
                assert rest.status_code == 503 and message == rest.json()["error"]
                assert client.is_server_live() and not client.is_server_ready()
            with grpc.insecure_channel(server.grpc_target) as channel:
                check = health_pb2_grpc.HealthStub(channel).Check
                got = check(health_pb2.HealthCheckRequest()).status
                assert got == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        pg.stop()

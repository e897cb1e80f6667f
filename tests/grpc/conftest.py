"""A server with gRPC on a port of its own, and tritonclient's gRPC clients for it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import tritonclient.grpc as triton

from harness.process import free_port
from tests.api.helpers import create
from tests.conftest import Server

#: Bodies up to 8 MiB, so that a 4 MiB tensor passes and a 9 MiB message does not.
MAX_BODY_BYTES = 8 * 1024 * 1024
LAYER = "g2d"


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "SPATIAL_DROPOUT_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "SPATIAL_DROPOUT_MAX_TENSOR_ELEMENTS": str(4 * 1024 * 1024),
    }
    database = tmp_path_factory.mktemp("grpc") / "layers.sqlite3"
    with Server(database, env=env, grpc_port=free_port()) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            create(http, name=LAYER, kind="spatial_dropout_2d", rate=0.5)
        yield server


@pytest.fixture
def http(grpc_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=grpc_server.url, timeout=30) as client:
        yield client


@pytest.fixture
def client(grpc_server: Server) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(grpc_server.grpc_target) as client:
        yield client

"""Fixtures shared by the whole suite: a real server process on 127.0.0.1 and a real client,
a real PostgreSQL, and the skip policy under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from harness.process import HOST, Child, free_port
from harness.process import ROOT as ROOT  # for the tests that find files in the checkout

if TYPE_CHECKING:
    from tests.postgres import PostgresServer


@dataclass
class Server:
    """A ``spatial-dropout serve`` process on 127.0.0.1, started and stopped by tests.

    ``with Server(...) as server:`` starts it and stops it however the block ends; ``start``
    and ``stop`` are for tests that restart or kill it. Its log lies beside ``database``.
    """

    database: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    #: Its gRPC port; 0 (the default here) serves no gRPC, so that servers never share 8001.
    grpc_port: int = 0
    child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def grpc_target(self) -> str:
        """``host:port`` of its gRPC server, as tritonclient.grpc takes it."""
        return f"{HOST}:{self.grpc_port}"

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.child.popen if self.child else None

    @property
    def log(self) -> Path:
        return self.database.with_suffix(f".{self.port}.log")

    def start(self, timeout: float = 30.0) -> Server:
        env = {
            **os.environ,
            "SPATIAL_DROPOUT_DATABASE_URL": f"sqlite:///{self.database}",
            "SPATIAL_DROPOUT_LOG_LEVEL": "warning",
            "SPATIAL_DROPOUT_GRPC_PORT": str(self.grpc_port),
            **self.env,
        }
        argv = [sys.executable, "-m", "service.cli", "serve", "--host", HOST]
        self.child = Child(
            "spatial-dropout serve", [*argv, "--port", str(self.port)], self.port, env
        )
        self.child.start(self.log).wait_ready("/readyz", timeout)
        return self

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serving(factory: pytest.TempPathFactory, name: str, **settings: object) -> Iterator[Server]:
    """A server of a module's (or the session's) own, for fixtures to ``yield from``: its store
    and log in a fresh temp directory ``name``, ``settings`` as SPATIAL_DROPOUT_<NAME> values."""
    env = {f"SPATIAL_DROPOUT_{key.upper()}": str(value) for key, value in settings.items()}
    with Server(factory.mktemp(name) / "layers.sqlite3", env=env) as server:
        yield server


def client_of(server: Server) -> Iterator[httpx.Client]:
    """An HTTP client for ``server``, closed afterwards, for fixtures to ``yield from``."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the session; tests that must stop one make their own."""
    yield from serving(
        tmp_path_factory, "server", max_body_bytes=8 * 1024 * 1024, max_tensor_elements=1024 * 1024
    )


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    yield from client_of(server)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (skipped where none is installed, but not in CI)."""
    from tests.postgres import PostgresServer, require_bindir

    bindir = require_bindir()
    server = PostgresServer(bindir).start()
    yield server
    server.stop()


#: Skips CI may show, by the start of their reason. None: CI (.ci/run) runs on Linux, as root
#: (so tmpfs mounts), with PostgreSQL and hadolint installed, so every test can run there.
CI_ALLOWED_SKIPS: tuple[str, ...] = ()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI (``CI`` set, as .ci/run sets it), a skip fails: a green run ran every test."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not (os.environ.get("CI") and report.skipped) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    if reason.removeprefix("Skipped: ").startswith(CI_ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under CI, where every test must run: {reason}"

"""The processes a benchmark run starts: the service, a bare ASGI echo app, a TCP echo server.

Each is a ``harness.process.Child`` on 127.0.0.1 (its own process group, dying with the
benchmark if it is killed outright). ``Processes`` stops whatever is still running when its
``with`` block ends, normally or by an exception.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import tempfile
from pathlib import Path
from types import TracebackType

from harness.process import HOST, Child, free_port

LAYER = "bench"


class Processes:
    """Starts the benchmark's servers; stops all of them on exit, even on Ctrl-C."""

    def __init__(self) -> None:
        self._procs: list[Child] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="spatial-dropout-bench-")
        self.dir = Path(self._tmp.name)

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            self._show_logs()  # the temporary directory, and the servers' logs, go next
        self.stop_all()
        self._tmp.cleanup()

    def _show_logs(self, lines: int = 30) -> None:
        for proc in self._procs:
            if proc.log is not None and proc.log.exists():
                tail = proc.log.read_text(errors="replace").splitlines()[-lines:]
                print(f"--- last lines of {proc.log.name}:", *tail, sep="\n", file=sys.stderr)

    def stop_all(self) -> None:
        while self._procs:
            self._procs.pop().stop()

    def stop(self, proc: Child) -> None:
        proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        port = free_port()
        argv = [*argv, "--host", HOST, "--port", str(port)]
        proc = Child(name, argv, port, env, die_with_parent=True)
        self._procs.append(proc)
        return proc.start(self.dir / f"{name}.{port}.log")

    def service(
        self, *, workers: int = 1, max_body: int = 512 * 2**20, grpc_port: int = 0
    ) -> Child:
        """``spatial-dropout serve`` on a free port with a fresh SQLite store and one layer
        named ``bench`` (spatial_dropout_2d, rate 0.5, channels_last); gRPC on ``grpc_port``
        (0: none, so that no run takes the default 8001 from another). Otherwise the default
        settings: the info log, so one access line per request, as a deployment has."""
        db = self.dir / f"layers-{len(self._procs)}-w{workers}.sqlite3"
        env = {
            **os.environ,
            "SPATIAL_DROPOUT_DATABASE_URL": f"sqlite:///{db}",
            "SPATIAL_DROPOUT_MAX_BODY_BYTES": str(max_body),
            "SPATIAL_DROPOUT_MAX_TENSOR_ELEMENTS": str(max_body // 2),
            "SPATIAL_DROPOUT_GRPC_PORT": str(grpc_port),
        }
        argv = [sys.executable, "-m", "service.cli", "serve", "--workers", str(workers)]
        proc = self._start(f"service-w{workers}", argv, env)
        proc.wait_ready("/readyz")
        create_layer(proc.port)
        return proc

    def asgi_echo(self, *, workers: int = 1) -> Child:
        """bench.asgi_echo under uvicorn, with the settings ``serve`` gives the service."""
        argv = [sys.executable, "-m", "bench.asgi_echo", "--workers", str(workers)]
        proc = self._start(f"asgi-echo-w{workers}", [*argv, "--log-level", "warning"])
        proc.wait_ready("/")
        return proc

    def grpc_echo(self) -> Child:
        """bench.grpc_echo: grpcio answering each call's bytes back, on a free port."""
        proc = self._start("grpc-echo", [sys.executable, "-m", "bench.grpc_echo"])
        proc.wait_port()
        return proc

    def tcp_echo(self) -> Child:
        proc = self._start("tcp-echo", [sys.executable, "-m", "bench.tcp_echo"])
        proc.wait_port()
        return proc


def create_layer(port: int) -> None:
    body = json.dumps(
        {"name": LAYER, "rate": 0.5, "data_format": "channels_last", "seed": 1}
    ).encode()
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("POST", "/layers", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        text = response.read()
        if response.status not in (201, 409):
            raise RuntimeError(f"creating the layer failed: {response.status} {text[:300]!r}")
    finally:
        conn.close()

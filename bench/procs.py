"""The processes a benchmark run starts: the service, a bare ASGI echo app, a TCP echo server.

Every one binds 127.0.0.1 only, runs in its own process group (so a Ctrl-C in the terminal
reaches the benchmark, which then stops them in order) and dies with the benchmark if it is
killed outright (``PR_SET_PDEATHSIG``). ``Processes`` stops whatever is still running when its
``with`` block ends, normally or by an exception.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
LAYER = "bench"


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` memory figure (VmRSS, VmHWM...) in KiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process."""
    return status_kib(pid, "VmRSS") * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Proc:
    name: str
    argv: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, logdir: Path) -> Proc:
        self.log = logdir / f"{self.name}.{self.port}.log"
        with self.log.open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return self

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is None or self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not become ready:\n{self.log_tail()}")

    def wait_port(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is None or self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen:\n{self.log_tail()}")

    def stop(self) -> None:
        popen, self.popen = self.popen, None
        if popen is None or popen.poll() is not None:
            return
        # Its own process group: the server and, with --workers N, its worker processes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()

    def log_tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Processes:
    """Starts the benchmark's servers; stops all of them on exit, even on Ctrl-C."""

    def __init__(self) -> None:
        self._procs: list[Proc] = []
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
        self.stop_all()
        self._tmp.cleanup()

    def stop_all(self) -> None:
        while self._procs:
            self._procs.pop().stop()

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)

    def _start(self, proc: Proc) -> Proc:
        self._procs.append(proc)
        return proc.start(self.dir)

    def service(self, *, workers: int = 1, max_body: int = 512 * 2**20) -> Proc:
        """``spatial-dropout serve`` on a free port with a fresh SQLite store and one layer
        named ``bench`` (spatial_dropout_2d, rate 0.5, channels_last)."""
        port = free_port()
        db = self.dir / f"layers-{port}.sqlite3"
        proc = Proc(
            name=f"service-w{workers}",
            argv=[
                sys.executable,
                *("-m", "service.cli", "serve", "--host", HOST, "--port", str(port)),
                *("--workers", str(workers)),
            ],
            port=port,
            env={
                "SPATIAL_DROPOUT_DATABASE_URL": f"sqlite:///{db}",
                "SPATIAL_DROPOUT_LOG_LEVEL": "warning",
                "SPATIAL_DROPOUT_MAX_BODY_BYTES": str(max_body),
                "SPATIAL_DROPOUT_MAX_TENSOR_ELEMENTS": str(max_body // 2),
            },
        )
        self._start(proc).wait_ready("/readyz")
        create_layer(port)
        return proc

    def asgi_echo(self, *, workers: int = 1) -> Proc:
        """bench.asgi_echo under uvicorn, with the settings ``serve`` gives the service."""
        port = free_port()
        proc = Proc(
            name=f"asgi-echo-w{workers}",
            argv=[
                sys.executable,
                *("-m", "bench.asgi_echo", "--host", HOST, "--port", str(port)),
                *("--workers", str(workers), "--log-level", "warning"),
            ],
            port=port,
        )
        self._start(proc).wait_ready("/")
        return proc

    def tcp_echo(self) -> Proc:
        port = free_port()
        proc = Proc(
            name="tcp-echo",
            argv=[sys.executable, "-m", "bench.tcp_echo", "--host", HOST, "--port", str(port)],
            port=port,
        )
        self._start(proc).wait_port()
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

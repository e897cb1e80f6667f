"""Child processes bound to 127.0.0.1: started with their output in a log file, waited for
until they answer, read for their memory, and stopped.

Each child runs in its own process group (so a Ctrl-C in the terminal reaches the parent,
which then stops its children in order, and ``--workers N`` servers stop whole). With
``die_with_parent`` it also dies if the parent is killed outright (``PR_SET_PDEATHSIG``); the
kernel ties that to the *thread* that started it, so only a parent that starts its children
from its main thread (the benchmark) asks for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


def free_port() -> int:
    """A loopback port free at this moment (the kernel's choice for port 0)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/PID/status`` memory figure (VmRSS, VmHWM...) in KiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process."""
    return status_kib(pid, "VmRSS") * 1024


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    """One child process serving on ``port``; ``env`` is its whole environment (None: ours)."""

    name: str
    argv: list[str]
    port: int
    env: dict[str, str] | None = None
    cwd: Path = ROOT
    log: Path | None = None
    die_with_parent: bool = False
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, log: Path) -> Child:
        """Start it, its output appended to ``log``; returns at once (see ``wait_ready``)."""
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        return self

    def wait_ready(self, path: str, timeout: float = 60.0) -> None:
        """Until ``GET path`` answers 200; raises, with the log's tail, if it exits or times out."""
        self._wait(lambda: _http_status(self.port, path) == 200, "become ready", timeout)

    def wait_port(self, timeout: float = 30.0) -> None:
        """Until the port takes a TCP connection."""
        self._wait(lambda: _connects(self.port), "listen", timeout)

    def _wait(self, ready: object, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is None or self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            if ready():  # type: ignore[operator]
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not {what}:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after 15 s; nothing if it is not running."""
        popen, self.popen = self.popen, None
        if popen is None or popen.poll() is not None:
            return
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


def _http_status(port: int, path: str) -> int | None:
    conn = http.client.HTTPConnection(HOST, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def _connects(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
    except OSError:
        return False
    return True

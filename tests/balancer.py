"""A real HAProxy (Debian's package) in front of service replicas on 127.0.0.1, for the tests
that restart and kill replicas under load: health checks on /readyz, and the balancer's own
retries (``retry-on``, ``option redispatch``) for requests a dead replica never answered."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from harness.process import HOST, free_port

#: The check interval and the failures that mark a server down: a drain must outlast both.
CHECK_INTERVAL_MS = 200
FALL = 2


def require_haproxy() -> str:
    """haproxy's path; the test is skipped where it is not installed, and fails under CI
    (which installs it)."""
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("HAProxy is not installed: .ci/run installs Debian's haproxy")
        pytest.skip("HAProxy is not installed (apt-get install haproxy)")
    return found


def config(port: int, stats_port: int, servers: dict[str, int], *, retries: bool) -> str:
    retrying = [
        # The balancer's own retries: a request no server answered (refused, reset before
        # any response) goes to another server, up to 3 times. Only safe requests are ever
        # sent to it in these tests: /apply and infer are pure functions of their input.
        "  retries 3",
        "  option redispatch 1",
        "  retry-on conn-failure empty-response response-timeout",
        "  option http-buffer-request",
    ]
    lines = [
        "global",
        "  maxconn 512",
        "defaults",
        "  mode http",
        "  timeout connect 1s",
        "  timeout client 30s",
        "  timeout server 30s",
        *(retrying if retries else ["  retries 0"]),
        "frontend service",
        f"  bind {HOST}:{port}",
        "  default_backend replicas",
        "backend replicas",
        "  balance roundrobin",
        "  option httpchk GET /readyz",
        "  http-check expect status 200",
        f"  default-server inter {CHECK_INTERVAL_MS}ms fall {FALL} rise 2",
        *(f"  server {name} {HOST}:{p} check" for name, p in servers.items()),
        "listen stats",
        f"  bind {HOST}:{stats_port}",
        "  stats enable",
        "  stats uri /stats",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class Balancer:
    servers: dict[str, int]
    root: Path
    #: The balancer's own retries (off: only the replicas' drain keeps requests from failing).
    retries: bool = True
    port: int = field(default_factory=free_port)
    stats_port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Balancer:
        binary = require_haproxy()
        cfg = self.root / "haproxy.cfg"
        cfg.write_text(config(self.port, self.stats_port, self.servers, retries=self.retries))
        with (self.root / "haproxy.log").open("wb") as log:  # the child keeps its own copy
            self.popen = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=log, stderr=log)
        self.wait_status(dict.fromkeys(self.servers, "UP"))
        return self

    def status(self) -> dict[str, str]:
        """Each server's state as HAProxy's stats say (UP, DOWN, UP 1/2, ...)."""
        text = httpx.get(f"http://{HOST}:{self.stats_port}/stats;csv", timeout=5).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "replicas" and row["svname"] in self.servers
        }

    def wait_status(self, wanted: dict[str, str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.status() == wanted:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"HAProxy never saw {wanted}")

    def stop(self) -> None:
        if self.popen is not None:
            self.popen.terminate()
            self.popen.wait(timeout=10)
            self.popen = None

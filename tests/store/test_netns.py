"""A replica cut off from its database: the replica runs in a network namespace of its own
(``ip netns``, as root), with one link for its clients and one to PostgreSQL. Taking the
database link down makes it report not ready within the database timeout, so a balancer
routes around it; it is ready again within 5 s of the link's return. Only the namespace and
the links this test makes are ever a target."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.postgres import PostgresServer, require_bindir

pytestmark = pytest.mark.e2e

TIMEOUT_S = 2.0  # SPATIAL_DROPOUT_DATABASE_TIMEOUT_SECONDS (the default)
MARGIN_S = 2.0
READY_WITHIN_S = 5.0


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@dataclass
class Namespace:
    """A namespace with two veth links to this host: ``client`` and ``database``."""

    name: str
    subnet: int  # 10.<subnet>.<1|2>.0/30 for the two links

    def client_ip(self, side: str) -> str:
        return f"10.{self.subnet}.1.{1 if side == 'host' else 2}"

    def database_ip(self, side: str) -> str:
        return f"10.{self.subnet}.2.{1 if side == 'host' else 2}"

    @property
    def database_link(self) -> str:
        return f"{self.name}-dh"

    def create(self) -> Namespace:
        ip("netns", "add", self.name)
        ip("netns", "exec", self.name, "ip", "link", "set", "lo", "up")
        for link, third in (("c", 1), ("d", 2)):
            host, inside = f"{self.name}-{link}h", f"{self.name}-{link}n"
            ip("link", "add", host, "type", "veth", "peer", "name", inside)
            ip("link", "set", inside, "netns", self.name)
            ip("addr", "add", f"10.{self.subnet}.{third}.1/24", "dev", host)
            ip("link", "set", host, "up")
            ip(
                "netns",
                "exec",
                self.name,
                "ip",
                "addr",
                "add",
                f"10.{self.subnet}.{third}.2/24",
                "dev",
                inside,
            )
            ip("netns", "exec", self.name, "ip", "link", "set", inside, "up")
        return self

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
        for link in ("c", "d"):
            subprocess.run(["ip", "link", "del", f"{self.name}-{link}h"], capture_output=True)


def require_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("network namespaces need root, which CI runs as")
        pytest.skip("network namespaces need root")


@pytest.fixture
def cut_off(tmp_path: Path) -> Iterator[tuple[Namespace, str]]:
    """The namespace, PostgreSQL listening on its database link too, and a replica inside."""
    require_root()
    ns = Namespace(f"sd{secrets.token_hex(3)}", 200 + secrets.randbelow(50)).create()
    pg = PostgresServer(
        require_bindir(),
        listen=f"127.0.0.1,{ns.database_ip('host')}",
        hba=(f"host all all {ns.database_ip('inside')}/32 trust",),
    )
    replica: subprocess.Popen[bytes] | None = None
    try:
        pg.start()
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE layers")
        port = 8000
        url = f"http://{ns.client_ip('inside')}:{port}"
        env = {
            **os.environ,
            "SPATIAL_DROPOUT_DATABASE_URL": (
                f"postgresql://postgres@{ns.database_ip('host')}:{pg.port}/layers"
            ),
            "SPATIAL_DROPOUT_GRPC_PORT": "0",
            "SPATIAL_DROPOUT_LOG_LEVEL": "warning",
        }
        argv = [
            "ip",
            "netns",
            "exec",
            ns.name,
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--host",
            ns.client_ip("inside"),
            "--port",
            str(port),
        ]
        with (tmp_path / "replica.log").open("wb") as log:
            replica = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        wait(lambda: status(url) == 200, "the replica's start", 60)
        yield ns, url
    finally:
        if replica is not None:
            replica.terminate()
            replica.wait(timeout=60)
        pg.stop()
        ns.delete()


def status(url: str) -> int:
    try:
        return httpx.get(f"{url}/readyz", timeout=10).status_code
    except httpx.TransportError:
        return 0


def wait(condition: object, what: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"never happened within {timeout} s: {what}")


def test_a_replica_cut_off_from_its_database_is_not_ready_then_ready_again(
    cut_off: tuple[Namespace, str],
) -> None:
    ns, url = cut_off
    made = httpx.post(f"{url}/layers", json={"name": "cut", "rate": 0.5, "seed": 7})
    assert made.status_code == 201, made.text
    ip("link", "set", ns.database_link, "down")  # packets to the database go nowhere
    cut = time.monotonic()
    to_unready = wait(lambda: status(url) == 503, "not ready", 30)
    problem = httpx.get(f"{url}/readyz", timeout=10).json()
    assert problem["code"] == "store_unavailable"
    # The client link still works, and the layer it served still answers.
    x = {"shape": [1, 2, 2, 3], "dtype": "float32", "data": list(range(1, 13))}
    applied = httpx.post(f"{url}/apply", json={"layer": "cut", "training": True, "input": x})
    assert applied.status_code == 200
    time.sleep(1.0)
    ip("link", "set", ns.database_link, "up")
    to_ready = wait(lambda: status(url) == 200, "ready again", 30)
    print(
        f"\nFIGURE netns: not ready {to_unready:.2f} s after the cut "
        f"({time.monotonic() - cut:.2f} s in all), ready {to_ready:.2f} s after the link's return"
    )
    assert to_unready < TIMEOUT_S + MARGIN_S
    assert to_ready < READY_WITHIN_S
    assert httpx.post(f"{url}/layers", json={"name": "after", "rate": 0.1}).status_code == 201

"""The image, built once per session with docker/build.py, and containers run from it.

Everything runs on podman with runc, on the host's network with the service bound to 127.0.0.1
on a free port (../shared/reference/containers.md has why each flag is there). Every container,
volume and image tag made here is removed by a finalizer, however the test ends.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from tests.conftest import ROOT, free_port

BUILD = ROOT / "docker" / "build.py"
# Set to an image already built (`make image`) to iterate on the tests without rebuilding.
PREBUILT = "SPATIAL_DROPOUT_TEST_IMAGE"
LOCAL_BASE = "localhost/spatial-dropout-base:bookworm"


def podman(
    *args: str, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None
) -> str:
    """Run podman (with runc: crun cannot start containers on these hosts); its stdout."""
    done = subprocess.run(
        ["podman", "--runtime", "runc", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.returncode}\n{done.stderr}")
    return done.stdout


def _limit(which: int, wanted: int) -> int:
    hard = resource.getrlimit(which)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def limits() -> dict[str, str]:
    """Limits at or below this host's hard ones: podman's defaults exceed them in sandboxes."""
    nofile = _limit(resource.RLIMIT_NOFILE, 20000)
    nproc = _limit(resource.RLIMIT_NPROC, 4096)
    return {"nofile": f"{nofile}:{nofile}", "nproc": f"{nproc}:{nproc}"}


def ulimits() -> list[str]:
    return [part for name, value in limits().items() for part in ("--ulimit", f"{name}={value}")]


def tool(name: str, package: str) -> str:
    """The path of a program the tests need; without it, skipped, except in CI."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed: .ci/run installs {package}")
        pytest.skip(f"{name} is not installed ({package})")
    return found


def render(directory: Path) -> list[dict[str, Any]]:
    """What ``kubectl kustomize DIR`` renders, as documents."""
    done = subprocess.run(
        [tool("kubectl", "Debian's kubernetes-client"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def tiny_model() -> bytes:
    """An ONNX graph of one ReLU, "input" to "output", FP32 of shape (N, 4, 4, 16)."""
    dims: list[str | int] = ["N", 4, 4, 16]
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def unique(kind: str) -> str:
    return f"sd-test-{kind}-{uuid.uuid4().hex[:10]}"


def say(request: pytest.FixtureRequest, lines: list[str]) -> None:
    """Print past pytest's capture: the build's choices and the image's size are the news."""
    plugins = request.config.pluginmanager
    report, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")
    if report is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        report.write_line("")
        for line in lines:
            report.write_line(line)


@pytest.fixture(scope="session")
def image(request: pytest.FixtureRequest) -> Iterator[str]:
    """A tag of the image docker/build.py builds; removed at the end of the session."""
    tool("podman", "Debian's podman, runc and mmdebstrap")
    prebuilt = os.environ.get(PREBUILT)
    if prebuilt:
        yield prebuilt
        return
    tag = f"localhost/{unique('image')}:latest"
    fresh = bool(os.environ.get("CI"))  # CI proves the whole path; a developer reuses the base
    command = [sys.executable, str(BUILD), "--engine", "podman", "--tag", tag]
    started = time.monotonic()
    done = subprocess.run(
        [*command, *(["--fresh-base"] if fresh else [])],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    try:
        assert done.returncode == 0, f"{command}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        size = image_size(tag)
        lines = [line for line in done.stderr.splitlines() if line.startswith("build.py:")]
        lines.append(f"image {tag}: {size / 2**20:.0f} MiB ({size} bytes)")
        lines.append(f"image built in {time.monotonic() - started:.0f} s")
        say(request, lines)
        yield tag
    finally:
        podman("rmi", "--force", tag, check=False)
        if fresh:
            podman("rmi", LOCAL_BASE, check=False)


def image_size(tag: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag))


@dataclass
class Container:
    """A detached container of the image serving on 127.0.0.1:port (host network)."""

    name: str
    port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_target(self) -> str:
        """``host:port`` of its gRPC server, as tritonclient.grpc takes it."""
        return f"127.0.0.1:{self.grpc_port}"

    def wait_ready(self, timeout: float = 90) -> Container:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state()["Status"] not in {"running", "created", "configured"}:
                raise AssertionError(f"{self.name} stopped:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} never became ready:\n{self.logs()}")

    def state(self) -> dict[str, object]:
        found: dict[str, object] = json.loads(
            podman("inspect", "--format", "{{json .State}}", self.name)
        )
        return found

    def logs(self) -> str:
        done = subprocess.run(
            ["podman", "logs", self.name], capture_output=True, text=True, timeout=60, check=False
        )
        return done.stdout + done.stderr

    def exec(self, *command: str) -> str:
        return podman("exec", self.name, *command)


@dataclass
class Containers:
    """Runs containers of one image and remembers them (and volumes) for removal."""

    image: str
    names: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def volume(self) -> str:
        name = unique("data")
        self.volumes.append(name)
        podman("volume", "create", name)
        return name

    def run(
        self,
        *,
        env: dict[str, str] | None = None,
        volume: str | None = None,
        read_only: bool = True,
        command: tuple[str, ...] = (),
        port: int | None = None,
        grpc_port: int | None = None,
        mounts: dict[Path, str] | None = None,
    ) -> Container:
        """``mounts`` maps host directories to where the container sees them, read-only."""
        container = Container(unique("run"), port or free_port(), grpc_port or free_port())
        self.names.append(container.name)
        settings = {
            "SPATIAL_DROPOUT_HOST": "127.0.0.1",
            "SPATIAL_DROPOUT_PORT": str(container.port),
            # Containers share the host's network: each its own gRPC port, not the default 8001.
            "SPATIAL_DROPOUT_GRPC_PORT": str(container.grpc_port),
            "SPATIAL_DROPOUT_LOG_LEVEL": "warning",
            **(env or {}),
        }
        podman(
            "run",
            "--detach",
            "--name",
            container.name,
            "--network",
            "host",
            *ulimits(),
            *(["--read-only", "--tmpfs", "/tmp"] if read_only else []),
            "--volume",
            f"{volume or self.volume()}:/data",
            *[
                part
                for source, target in (mounts or {}).items()
                for part in ("--volume", f"{source}:{target}:ro")
            ],
            *[part for key, value in settings.items() for part in ("--env", f"{key}={value}")],
            self.image,
            *command,
        )
        return container.wait_ready()

    def remove(self) -> None:
        for name in self.names:
            podman("rm", "--force", "--time", "0", name, check=False)
        for name in self.volumes:
            podman("volume", "rm", "--force", name, check=False)


@pytest.fixture
def containers(image: str) -> Iterator[Containers]:
    made = Containers(image)
    try:
        yield made
    finally:
        made.remove()

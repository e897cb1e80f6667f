"""What the image does, without Docker: build the wheel, install it into a clean virtual
environment, serve from it with the source tree nowhere on the path, and call it.

Slow (about a minute: pip installs the dependencies, from its cache when it can), so it runs
once, in one test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from harness.process import ROOT, Child, free_port
from tests.docker.test_files import instructions


def _run(*command: str | Path, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment less anything that would put this checkout on the path."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"} and not k.startswith(PREFIX)
    }
    return {**env, **extra}


PREFIX = "SPATIAL_DROPOUT_"


def test_the_wheel_serves_from_a_clean_virtualenv(tmp_path: Path) -> None:
    # The build context the Dockerfile copies, and nothing else.
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(
        ROOT / "service", context / "service", ignore=shutil.ignore_patterns("__pycache__")
    )
    env = _clean_env()
    dist = tmp_path / "dist"
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "-w",
        dist,
        context,
        cwd=tmp_path,
        env=env,
    )
    (wheel,) = dist.glob("spatial_dropout_service-*.whl")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path, env=env)
    python, bindir = venv / "bin" / "python", venv / "bin"
    _run(
        python,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        wheel,
        cwd=tmp_path,
        env=env,
    )

    where = tmp_path / "elsewhere"
    where.mkdir()
    located = _run(python, "-c", "import service; print(service.__file__)", cwd=where, env=env)
    assert Path(located.strip()).is_relative_to(venv)  # the installed copy, not this checkout

    port = free_port()
    data = tmp_path / "data"
    serve_env = _clean_env(
        PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}",
        SPATIAL_DROPOUT_HOST="127.0.0.1",
        SPATIAL_DROPOUT_PORT=str(port),
        SPATIAL_DROPOUT_WORKERS="1",
        SPATIAL_DROPOUT_GRPC_PORT="0",  # 8001 may be another test's
        SPATIAL_DROPOUT_DATABASE_URL=f"sqlite:///{data}/layers.sqlite3",
    )
    served = Child(
        "the installed serve", [str(bindir / "spatial-dropout"), "serve"], port, serve_env
    )
    served.cwd = where
    try:
        served.start(tmp_path / "serve.log").wait_ready("/readyz")
        url = f"http://127.0.0.1:{port}"
        made = httpx.post(f"{url}/layers", json={"name": "sd", "rate": 0.5, "seed": 7})
        assert made.status_code == 201, made.text
        applied = httpx.post(
            f"{url}/apply",
            json={"layer": "sd", "training": True, "return_mask": True, "input": [[[[1, 2, 3]]]]},
        )
        assert applied.status_code == 200
        assert applied.json()["mask"] == [[True, False, True]]  # the README's seed-7 mask
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        _run(*_healthcheck(), cwd=where, env=serve_env)  # the image's HEALTHCHECK, as written
        assert served.popen is not None
        served.popen.send_signal(signal.SIGTERM)
        assert served.popen.wait(timeout=60) == 0
    finally:
        served.stop()
    assert (data / "layers.sqlite3").exists()


def _healthcheck() -> list[str]:
    (health,) = [rest for word, rest in instructions() if word == "HEALTHCHECK"]
    command: list[str] = json.loads(health[health.index("CMD") + 3 :].strip())
    return command

"""The Makefile's plan, read from `make -n`: serving installs the runtime alone, testing adds
the rest into the same .venv, and a .venv that is there is upgraded, never made again."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def plan(target: str, venv: Path) -> list[str]:
    """The commands `make TARGET` would run with this .venv (none is run)."""
    # Run from `make test`, make would pass its own flags and print directory lines: not here.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(
        [
            "make",
            "-n",
            "--no-print-directory",
            "-f",
            str(ROOT / "Makefile"),
            f"VENV={venv}",
            target,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def installs(commands: list[str]) -> list[str]:
    return [c.split(" -e ", 1)[1] for c in commands if " install " in c and " -e " in c]


def creates_venv(commands: list[str]) -> bool:
    return any(" -m venv " in c for c in commands)


def mark(venv: Path, *stamps: str) -> None:
    """A .venv as the given stamps say it was installed (stamps newer than what they are
    made from: pyproject.toml and the C sources)."""
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin" / "python").touch()
    sources = (ROOT / "pyproject.toml", *ROOT.glob("service/*/_*.c"))
    later = max(source.stat().st_mtime for source in sources) + 10
    for stamp in stamps:
        (venv / stamp).touch()
        os.utime(venv / stamp, (later, later))


def test_serve_on_a_fresh_clone_installs_only_the_project(tmp_path: Path) -> None:
    commands = plan("serve", tmp_path / "venv")
    assert creates_venv(commands)
    assert installs(commands) == ["."]  # no extras: no test tools, no Keras, no torch
    assert commands[-1].endswith("spatial-dropout serve")


def test_test_on_a_fresh_clone_installs_everything(tmp_path: Path) -> None:
    commands = plan("test", tmp_path / "venv")
    assert creates_venv(commands)
    assert installs(commands) == ["'.[dev,compat]'"]
    assert commands[-1].endswith("python -m pytest")


def test_setup_is_the_full_install(tmp_path: Path) -> None:
    assert installs(plan("setup", tmp_path / "venv")) == ["'.[dev,compat]'"]


def test_test_after_serve_upgrades_the_same_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    mark(venv, ".runtime")
    commands = plan("test", venv)
    assert not creates_venv(commands)
    assert installs(commands) == ["'.[dev,compat]'"]


def test_serve_after_test_installs_nothing(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    mark(venv, ".installed", ".runtime")
    commands = plan("serve", venv)
    assert installs(commands) == [] and not creates_venv(commands)
    assert installs(plan("test", venv)) == []


def test_a_changed_pyproject_reinstalls_into_the_same_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    mark(venv)
    (venv / ".runtime").touch()
    os.utime(venv / ".runtime", (0, 0))  # older than pyproject.toml
    commands = plan("serve", venv)
    assert installs(commands) == ["."] and not creates_venv(commands)

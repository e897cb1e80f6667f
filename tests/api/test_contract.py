"""openapi.yaml is what the app serves, every operation shows an example, health answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT


def test_openapi_yaml_is_what_the_server_serves(client: httpx.Client) -> None:
    committed = yaml.safe_load((ROOT / "openapi.yaml").read_text(encoding="utf-8"))
    served = client.get("/openapi.json").json()
    assert served == committed, "openapi.yaml is stale: run `spatial-dropout openapi`"


def _has_example(node: Any) -> bool:
    if isinstance(node, dict):
        if "example" in node or "examples" in node:
            return True
        return any(_has_example(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_example(v) for v in node)
    return False


def test_every_operation_has_an_example() -> None:
    doc = yaml.safe_load((ROOT / "openapi.yaml").read_text(encoding="utf-8"))
    operations = [
        (path, method, op) for path, item in doc["paths"].items() for method, op in item.items()
    ]
    assert len(operations) >= 8
    for path, method, op in operations:
        success = next(code for code in op["responses"] if code.startswith("2"))
        assert success == "204" or _has_example(op["responses"][success]), (
            f"{method.upper()} {path} has no example of its success answer"
        )
        if method in {"post", "put"}:
            assert _has_example(op["requestBody"]), f"{method.upper()} {path}: no body example"


def test_every_error_code_is_documented_in_the_readme() -> None:
    from service import errors

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ServiceError)
    }
    missing = sorted(code for code in codes if f"`{code}`" not in readme)
    assert not missing, f"README does not document: {missing}"


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["layers"] >= 0


def test_openapi_command_rewrites_and_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    target = tmp_path / "openapi.yaml"
    target.write_text("openapi: stale\n", encoding="utf-8")
    assert main(["openapi", "--check", "-o", str(target)]) == 1
    assert "differs from the app" in capsys.readouterr().err
    assert main(["openapi", "-o", str(target)]) == 0
    assert main(["openapi", "--check", "-o", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == (ROOT / "openapi.yaml").read_text(encoding="utf-8")

"""The README's console examples, run for real against a fresh server, so they cannot rot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Server

README_URL = "http://127.0.0.1:8000"
WILDCARD = "…"  # in an expected JSON answer: any value (ids, timestamps)


def console_examples(text: str) -> list[tuple[str, str]]:
    """(command, expected output) pairs from the README's ```console blocks, in order."""
    pairs: list[tuple[str, str]] = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, output = chunk.partition("\n")
            pairs.append((command, output.rstrip("\n")))
    return pairs


def matches(expected: Any, got: Any) -> bool:
    if expected == WILDCARD:
        return True
    if isinstance(expected, dict):
        return (
            isinstance(got, dict)
            and expected.keys() == got.keys()
            and all(matches(v, got[k]) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(got, list)
            and len(expected) == len(got)
            and all(matches(e, g) for e, g in zip(expected, got, strict=True))
        )
    return bool(expected == got)


def test_the_readme_has_examples() -> None:
    examples = console_examples((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(examples) >= 8
    assert all(command.strip() for command, _ in examples)


def test_readme_examples_run_as_shown(tmp_path: Path) -> None:
    examples = console_examples((ROOT / "README.md").read_text(encoding="utf-8"))
    server = Server(tmp_path / "readme.sqlite3").start()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    try:
        for command, expected in examples:
            run = subprocess.run(
                ["bash", "-c", command.replace(README_URL, server.url)],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert run.returncode == 0, f"{command}\n{run.stderr}"
            got = run.stdout.rstrip("\n")
            if expected.startswith("{"):
                assert matches(json.loads(expected), json.loads(got)), f"{command}\n{got}"
            else:
                assert got == expected, f"{command}\n{got}"
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("expected", "got", "result"),
    [
        ({"a": WILDCARD}, {"a": 3}, True),
        ({"a": 1}, {"a": 2}, False),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ([1, WILDCARD], [1, [2]], True),
    ],
)
def test_matcher(expected: Any, got: Any, result: bool) -> None:
    assert matches(expected, got) is result

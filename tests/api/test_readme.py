"""The README's examples, run for real against a fresh server, so they cannot rot.

Each console command and each Python snippet runs as a reader runs it: in a terminal that has
done the README's setup (`. .venv/bin/activate`, in a directory with the project's .venv) and
nothing more, so a command that needs what the README does not say fails here too. Each must
print exactly what the README shows (byte for byte, but for "…" in JSON: ids, timestamps)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.process import free_port
from tests.conftest import ROOT, Server

README_URL = "http://127.0.0.1:8000"
WILDCARD = "…"  # in an expected JSON answer: any string value (ids, timestamps)
ACTIVATE = ". .venv/bin/activate"


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def console_examples(text: str) -> list[tuple[str, str]]:
    """(command, expected output) pairs from the README's ```console blocks, in order."""
    pairs: list[tuple[str, str]] = []
    for block in re.findall(r"```console\n(.*?)```", text, flags=re.S):
        pairs.extend(_console_pairs(block))
    return pairs


def _console_pairs(block: str) -> list[tuple[str, str]]:
    pairs = []
    for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
        command, _, output = chunk.partition("\n")
        pairs.append((command, output.rstrip("\n")))
    return pairs


def python_output(snippet: str) -> str:
    """What a snippet says it prints: its closing comment lines, without the ``# ``."""
    lines = snippet.rstrip("\n").splitlines()
    shown: list[str] = []
    while lines and lines[-1].startswith("#"):
        shown.insert(0, lines.pop()[2:])
    return "\n".join(shown)


def examples(text: str) -> list[tuple[str, str, str]]:
    """(kind, code, expected output) for every console command and Python snippet, in order."""
    found: list[tuple[str, str, str]] = []
    for kind, body in re.findall(r"```(console|python)\n(.*?)```", text, flags=re.S):
        if kind == "console":
            found.extend(("console", command, out) for command, out in _console_pairs(body))
        else:
            found.append(("python", body, python_output(body)))
    return found


def matches(expected: str, got: str) -> bool:
    """``got`` is ``expected`` exactly, where each ``"…"`` stands for any JSON string."""
    pattern = re.escape(expected).replace(re.escape(f'"{WILDCARD}"'), r'"[^"\\]*"')
    return re.fullmatch(pattern, got) is not None


def test_the_readme_has_examples() -> None:
    found = examples(readme())
    assert len([e for e in found if e[0] == "console"]) >= 8
    assert all(code.strip() for _, code, _ in found)
    assert all(out for kind, _, out in found if kind == "python")  # each shows its output
    assert f"\n{ACTIVATE}" in readme()  # the setup these examples assume is the README's


def user_terminal(workdir: Path) -> dict[str, str]:
    """The environment of a terminal before activation, in a directory holding .venv: the
    project's venv (the one running these tests) off PATH, as a user's shell has it."""
    venv = Path(sys.executable).parent.parent
    (workdir / ".venv").symlink_to(venv, target_is_directory=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"VIRTUAL_ENV", "PYTHONPATH", "KERAS_BACKEND"}
    }
    env["PATH"] = os.pathsep.join(
        entry
        for entry in os.environ["PATH"].split(os.pathsep)
        if entry and Path(entry).resolve() != (venv / "bin").resolve()
    )
    return env


def test_readme_examples_run_as_shown(tmp_path: Path) -> None:
    found = examples(readme())
    server = Server(tmp_path / "readme.sqlite3", grpc_port=free_port()).start()
    work = tmp_path / "work"
    work.mkdir()
    env = user_terminal(work)
    try:
        for index, (kind, code, expected) in enumerate(found):
            code = code.replace(README_URL, server.url).replace("127.0.0.1:8000", server.url[7:])
            code = code.replace("127.0.0.1:8001", server.grpc_target)
            if kind == "python":
                script = work / f"snippet{index}.py"
                script.write_text(code, encoding="utf-8")
                code = f"python {script.name}"
            run = subprocess.run(
                ["bash", "-c", f"{ACTIVATE} && {code}"],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,  # Keras on torch imports slowly on a busy machine
            )
            assert run.returncode == 0, f"{code}\n{run.stderr}"
            got = run.stdout.rstrip("\n")
            assert matches(expected, got), f"{code}\nREADME: {expected}\ngot:    {got}"
    finally:
        server.stop()


def test_without_the_setup_the_commands_are_not_found(tmp_path: Path) -> None:
    """The terminal above really lacks the project until it activates: the README's
    `spatial-dropout` lines would fail without the line that says to activate."""
    env = user_terminal(tmp_path)
    run = subprocess.run(
        ["bash", "-c", "command -v spatial-dropout"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 or not run.stdout.startswith(str(Path(sys.executable).parent))


@pytest.mark.parametrize(
    ("expected", "got", "result"),
    [
        ('{"a":"…"}', '{"a":"3f2a"}', True),
        ('{"a":1}', '{"a":2}', False),
        ('{"a":1}', '{"a": 1}', False),  # spacing is what the user sees: it must match
        ('{"a":1}', '{"a":1,"b":2}', False),
        ('[1,"…"]', '[1,"x"]', True),
        ('{"a":"…"}', '{"a":"x","b":"y"}', False),
    ],
)
def test_matcher(expected: str, got: str, result: bool) -> None:
    assert matches(expected, got) is result

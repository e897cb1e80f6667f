"""Settings: one typed object; every field has a one-line docstring and a README row with its
default, and the README lists nothing that is not a setting."""

from __future__ import annotations

import ast
import inspect
import re
from enum import Enum

import pytest
from pydantic import SecretStr

from service.settings import Settings
from tests.conftest import ROOT

PREFIX = "SPATIAL_DROPOUT_"
ROW = re.compile(r"^\| `(?P<var>SPATIAL_DROPOUT_[A-Z_]+)` \| (?P<default>[^|]*?) \| .+\|$")


def readme_rows() -> dict[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            assert match["var"] not in rows, f"{match['var']} is listed twice"
            rows[match["var"]] = match["default"]
    return rows


def shown(default: object) -> str:
    """How the README writes a default: as one would set it in the environment."""
    if isinstance(default, SecretStr):
        default = default.get_secret_value()
    if isinstance(default, Enum):
        default = default.value
    if isinstance(default, bool):
        default = str(default).lower()
    return f"`{default}`" if default != "" else "(none)"


def test_the_readme_lists_every_setting_with_its_default_and_nothing_else() -> None:
    rows = readme_rows()
    expected = {
        PREFIX + name.upper(): shown(field.default) for name, field in Settings.model_fields.items()
    }
    assert sorted(rows) == sorted(expected), "README settings table and Settings disagree"
    for variable, default in expected.items():
        assert rows[variable] == default, f"{variable}: README says {rows[variable]}"


def test_every_setting_has_a_one_line_docstring() -> None:
    body = ast.parse(inspect.getsource(Settings)).body[0]
    assert isinstance(body, ast.ClassDef)
    documented = {}
    for node, after in zip(body.body, body.body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc = after.value.value if isinstance(after, ast.Expr) else None
            documented[node.target.id] = doc if isinstance(doc, str) else None
    for name in Settings.model_fields:
        doc = documented.get(name)
        assert doc and "\n" not in doc.strip(), f"{name} needs a one-line docstring"


@pytest.mark.parametrize(
    ("raw", "tokens"),
    [("", ()), ("a", ("a",)), (" a , b,,", ("a", "b")), (",", ())],
)
def test_api_tokens_are_comma_separated(raw: str, tokens: tuple[str, ...]) -> None:
    assert Settings(api_tokens=SecretStr(raw)).tokens() == tokens


def test_tokens_never_show_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPATIAL_DROPOUT_API_TOKENS", "very-secret")
    settings = Settings()
    assert settings.tokens() == ("very-secret",)
    assert "very-secret" not in repr(settings)

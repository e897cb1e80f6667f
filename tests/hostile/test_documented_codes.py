"""Every code the service can put in an answer is a row of the README's error table: the
ServiceError codes and the codes given to the framework's own statuses (404, 405, ...)."""

from __future__ import annotations

import re
from pathlib import Path

from service import errors
from service.api.problems import _HTTP_CODES

ROOT = Path(__file__).resolve().parents[2]


def _table_codes() -> dict[str, int]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Errors", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d{3}) \| `([a-z_0-9]+)` \|", section, flags=re.MULTILINE)
    return {code: int(status) for status, code in rows}


def test_every_code_is_a_row_of_the_error_table_with_its_status() -> None:
    table = _table_codes()
    emitted = {
        cls.code: cls.status
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ServiceError)
    }
    emitted |= {code: status for status, code in _HTTP_CODES.items()}
    missing = {code: status for code, status in emitted.items() if table.get(code) != status}
    assert not missing, f"not in the README's error table with this status: {missing}"

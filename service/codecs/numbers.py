"""A flat JSON list of numbers into float64 without numpy's type discovery, when the optional
extension (``_numbers.c``) is built.

``np.asarray(list)`` walks the whole list to find a dtype before it converts it; for a list of
floats that walk costs as much as the conversion. The compiled pass takes floats and
int64-range ints (never bools) and declines anything else, so the caller goes on with numpy,
which stays the reference: the values are the same bits either way.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray


def _load() -> ModuleType | None:
    try:
        return importlib.import_module("service.codecs._numbers")
    except ImportError:  # not built (no compiler at install time): numpy does it
        return None


_native = _load()


def available() -> bool:
    """Whether the compiled pass is importable here."""
    return _native is not None


def floats(items: list[Any]) -> NDArray[np.float64] | None:
    """``items`` as float64 when every one is a float or an int64-range int; else None (and
    when the extension is not built)."""
    if _native is None:
        return None
    out = np.empty(len(items), dtype=np.float64)
    return out if _native.floats_into(items, out) else None

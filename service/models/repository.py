"""A read-only model repository: a directory with ``NAME.onnx`` or ``NAME/model.onnx`` files.

This is how KServe hands a predictor its ``storageUri`` (downloaded to ``/mnt/models``). A
model is found only under a name that is a valid model name (no separators, no ``..``), so a
request never reaches outside the directory; files are read with a size bound, and the bytes
then go through the same checks as an uploaded model (no file a model names is ever read).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from service.errors import BodyTooLarge, InvalidName
from service.layers.resolve import check_name


@dataclass(frozen=True, slots=True)
class RepositoryFile:
    name: str
    path: Path
    sha256: str
    data: bytes


class Repository:
    """Models in ``root``, read on demand and remembered by (path, size, mtime)."""

    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._seen: dict[Path, tuple[tuple[int, int], RepositoryFile]] = {}
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path | None:
        try:
            check_name(name)
        except InvalidName:
            return None
        for candidate in (self.root / f"{name}.onnx", self.root / name / "model.onnx"):
            if candidate.is_file():
                return candidate
        return None

    def has(self, name: str) -> bool:
        return self._path(name) is not None

    def names(self) -> list[str]:
        """Every model name the directory holds, sorted."""
        found = set()
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return []
        for entry in entries:
            if entry.name.endswith(".onnx") and entry.is_file():
                found.add(entry.name[: -len(".onnx")])
            elif entry.is_dir() and (Path(entry.path) / "model.onnx").is_file():
                found.add(entry.name)
        return sorted(name for name in found if self._path(name) is not None)

    def read(self, name: str) -> RepositoryFile | None:
        """The model file named ``name`` (None: no such file); BodyTooLarge past the bound."""
        path = self._path(name)
        if path is None:
            return None
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            seen = self._seen.get(path)
        if seen is not None and seen[0] == key:
            return seen[1]
        if stat.st_size > self.max_bytes:
            raise BodyTooLarge(self.max_bytes)
        with path.open("rb") as handle:
            data = handle.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise BodyTooLarge(self.max_bytes)
        found = RepositoryFile(name, path, hashlib.sha256(data).hexdigest(), data)
        with self._lock:
            self._seen[path] = (key, found)
        return found

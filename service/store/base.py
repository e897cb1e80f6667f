"""The store's contract, which every backend meets (and the same tests check)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from service.layers.resolve import ResolvedSpec
from service.layers.spec import Layer


@dataclass(frozen=True, slots=True)
class Page:
    layers: list[Layer]
    next_cursor: str | None


class LayerStore(Protocol):
    """Layers by id and unique name. Methods block; routes call them from a worker thread."""

    def create(self, spec: ResolvedSpec) -> Layer:
        """Store a new layer, naming it Keras-style when the spec has no name.

        Raises NameConflict when the name is taken, atomically: of many concurrent creates of
        one name exactly one succeeds.
        """
        ...

    def get(self, ref: str) -> Layer:
        """The layer whose id or name is ``ref``; raises LayerNotFound."""
        ...

    def list(self, limit: int, cursor: str | None = None) -> Page:
        """Layers in creation order, ``limit`` at a time, after ``cursor``."""
        ...

    def delete(self, ref: str) -> None:
        """Remove the layer whose id or name is ``ref``; raises LayerNotFound."""
        ...

    def count(self) -> int:
        """How many layers are stored."""
        ...

    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers a query."""
        ...

    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...

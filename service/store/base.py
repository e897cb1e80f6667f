"""The store's contract, which every backend meets (and the same tests check)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from service.errors import InvalidCursor
from service.layers.resolve import ResolvedSpec
from service.layers.spec import Layer


@dataclass(frozen=True, slots=True)
class Page:
    layers: list[Layer]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class StoredModel:
    """A stored ONNX model: its name, what ``ModelInfo.as_dict`` says of it, when it was
    stored, and (when asked for) its bytes, read in the same query as the rest."""

    name: str
    info: dict[str, Any]
    created_at: str
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class ModelPage:
    models: list[StoredModel]
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

    def put_model(self, name: str, data: bytes, info: dict[str, Any]) -> tuple[StoredModel, bool]:
        """Store model ``name`` (replacing one of that name), and whether it is new.

        Raises NameConflict when a layer has the name; atomic against concurrent layer
        creates and model puts of the name.
        """
        ...

    def get_model(self, name: str, *, with_data: bool = False) -> StoredModel:
        """Model ``name`` (its bytes too when ``with_data``); raises ModelNotFound."""
        ...

    def list_models(self, limit: int, cursor: str | None = None) -> ModelPage:
        """Models in the order they were first stored, ``limit`` at a time, after ``cursor``."""
        ...

    def delete_model(self, name: str) -> None:
        """Remove model ``name``; raises ModelNotFound."""
        ...

    def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers a query."""
        ...

    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...


#: A cursor is the position (an integer) of the last layer of the previous page.
_MAX_CURSOR_DIGITS: Final = 18


def keras_next_name(base: str, taken: Iterable[str]) -> str:
    """Keras's scheme: ``base``, then ``base_1``, ``base_2``... one past the highest in use.

    ``taken`` holds the stored names equal to ``base`` or starting with ``base_``; others
    (``base_x``, non-ASCII digits) do not count.
    """
    top = -1
    for name in taken:
        tail = name[len(base) :]
        if name[: len(base)] != base:
            continue
        if tail == "":
            top = max(top, 0)
        elif tail[0] == "_" and tail[1:].isascii() and tail[1:].isdigit():
            top = max(top, int(tail[1:]))
    return base if top < 0 else f"{base}_{top + 1}"


def decode_cursor(cursor: str | None) -> int:
    """The position a ``next_cursor`` names (0 for the first page); InvalidCursor otherwise."""
    if cursor is None:
        return 0
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > _MAX_CURSOR_DIGITS:
        raise InvalidCursor(cursor)
    return int(cursor)


_Item = TypeVar("_Item")


def page_rows(
    rows: Sequence[Sequence[Any]], limit: int, item_of: Callable[[Any], _Item]
) -> tuple[list[_Item], str | None]:
    """The items of a page, and the cursor of the next one, from up to ``limit + 1`` rows
    whose first column is the sequence number: the extra row only says that another follows."""
    shown = rows[:limit]
    return [item_of(row) for row in shown], str(shown[-1][0]) if len(rows) > limit else None


def page_of(rows: Sequence[Sequence[Any]], limit: int, layer_of: Callable[[Any], Layer]) -> Page:
    """A page of layers (see ``page_rows``)."""
    return Page(*page_rows(rows, limit, layer_of))

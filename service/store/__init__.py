"""Where layers live. ``open_store`` picks the backend from the database URL."""

from __future__ import annotations

from service.store.base import LayerStore, Page
from service.store.sqlite import SqliteLayerStore, sqlite_path


def open_store(database_url: str) -> LayerStore:
    """Open the store a ``SPATIAL_DROPOUT_DATABASE_URL`` names."""
    path = sqlite_path(database_url)
    if path is None:
        raise ValueError(
            f"Unsupported database URL {database_url!r}: use sqlite:///relative/path or "
            "sqlite:////absolute/path."
        )
    return SqliteLayerStore(path)


__all__ = ["LayerStore", "Page", "SqliteLayerStore", "open_store"]

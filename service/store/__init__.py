"""Where layers live. ``open_store`` picks the backend from the database URL's scheme."""

from __future__ import annotations

from service.store.base import LayerStore, Page
from service.store.database import POOL_SIZE, TIMEOUT
from service.store.postgres import PostgresLayerStore, postgres_conninfo
from service.store.sqlite import SqliteLayerStore, sqlite_path


def open_store(
    database_url: str, *, pool_size: int = POOL_SIZE, timeout: float = TIMEOUT
) -> LayerStore:
    """Open the store a ``SPATIAL_DROPOUT_DATABASE_URL`` names: SQLite or PostgreSQL.

    ``timeout`` bounds each PostgreSQL call (SQLite, a local file, waits for its lock instead).
    """
    path = sqlite_path(database_url)
    if path is not None:
        return SqliteLayerStore(path)
    conninfo = postgres_conninfo(database_url)
    if conninfo is not None:
        return PostgresLayerStore(conninfo, pool_size=pool_size, timeout=timeout)
    scheme = database_url.partition(":")[0]
    raise ValueError(
        f"Unsupported database URL scheme {scheme!r}: use sqlite:///relative/path, "
        "sqlite:////absolute/path or postgresql://user:password@host:port/database."
    )


__all__ = ["LayerStore", "Page", "PostgresLayerStore", "SqliteLayerStore", "open_store"]

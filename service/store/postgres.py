"""PostgreSQL store: one database that several replicas (and their workers) share."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from service.errors import LayerNotFound, NameConflict, StoreFull, StoreUnavailable
from service.layers.resolve import DEFAULT_NAMES, ResolvedSpec
from service.layers.spec import Layer
from service.store.base import Page, decode_cursor, keras_next_name, page_of

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS layers (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT NOT NULL CONSTRAINT layers_id_unique UNIQUE,
    name       TEXT NOT NULL CONSTRAINT layers_name_unique UNIQUE,
    spec       JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
)
"""
_COLUMNS: Final = "seq, id, name, spec, created_at"
_NAME_CONSTRAINT: Final = "layers_name_unique"
_URL: Final = re.compile(r"(?:postgres|postgresql)(?:\+psycopg)?://.*", re.S)
#: Keys of the transaction-level advisory locks this store takes (any fixed 64-bit numbers
#: that other applications on the same database are unlikely to use).
_SCHEMA_LOCK: Final = 0x5D_5C_0001
_NAMES_LOCK: Final = 0x5D_5C_0002
#: A generated name can still collide with a name another process inserts explicitly at the
#: same moment (those do not take the lock); then the next free one is chosen, this often.
_NAME_ATTEMPTS: Final = 8
#: How long to wait for a connection: at start-up, and for a free one in the pool (s).
_CONNECT_TIMEOUT: Final = 10.0


def postgres_conninfo(database_url: str) -> str | None:
    """The libpq URL a ``postgresql://`` (or ``postgres://``) database URL names, else None."""
    if not _URL.fullmatch(database_url):
        return None
    return database_url.replace("+psycopg://", "://", 1)


class PostgresLayerStore:
    """Layers in a PostgreSQL table, through a pool of connections.

    Names are unique by a UNIQUE constraint. Generated names are chosen under a
    transaction-level advisory lock, so creates in any number of processes and replicas never
    pick the same one; the lock is released when the transaction ends, even if a process dies.
    """

    def __init__(
        self, conninfo: str, pool_size: int = 10, connect_timeout: float = _CONNECT_TIMEOUT
    ) -> None:
        self._pool = ConnectionPool(
            conninfo,
            min_size=1,
            max_size=max(1, pool_size),
            open=False,
            timeout=_CONNECT_TIMEOUT,
            name="spatial-dropout",
            # Autocommit: reads cost one round trip; writes open their own transaction.
            # UTC: created_at reads back the same on every replica, whatever the server's zone.
            kwargs={"autocommit": True, "options": "-c TimeZone=UTC"},
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except PoolTimeout:
            self._pool.close()
            raise StoreUnavailable("The PostgreSQL layer store did not answer.") from None
        with self._connection() as conn:
            try:
                with conn.transaction():
                    # Replicas starting together must not race on CREATE TABLE IF NOT EXISTS.
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    conn.execute(_SCHEMA)
            except psycopg.Error as exc:
                self._pool.close()
                raise _store_error(exc) from exc

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        if self._pool.closed:
            raise StoreUnavailable("The layer store is closed.")
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise StoreUnavailable("The layer store did not answer; nothing was written.") from None
        except psycopg.Error as exc:
            raise _store_error(exc) from exc

    # -- the contract ---------------------------------------------------------------------

    def create(self, spec: ResolvedSpec) -> Layer:
        layer_id = uuid.uuid4().hex
        created_at = datetime.now(UTC)
        with self._connection() as conn:
            for _ in range(_NAME_ATTEMPTS):
                try:
                    with conn.transaction():
                        if spec.name is None:
                            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_NAMES_LOCK,))
                            name = _next_name(conn, DEFAULT_NAMES[spec.kind])
                        else:
                            name = spec.name
                        record = {**spec.as_dict(), "name": name}
                        conn.execute(
                            "INSERT INTO layers (id, name, spec, created_at) "
                            "VALUES (%s, %s, %s, %s)",
                            (layer_id, name, Jsonb(record), created_at),
                        )
                    break
                except pg_errors.UniqueViolation as exc:
                    if exc.diag.constraint_name != _NAME_CONSTRAINT:
                        raise
                    if spec.name is not None:
                        raise NameConflict(spec.name) from None
            else:
                raise StoreUnavailable("Could not choose a free layer name; try again.")
        return _layer(layer_id, name, record, created_at)

    def get(self, ref: str) -> Layer:
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM layers WHERE id = %s OR name = %s LIMIT 1", (ref, ref)
            ).fetchone()
        if row is None:
            raise LayerNotFound(ref)
        return _row_layer(row)

    def list(self, limit: int, cursor: str | None = None) -> Page:
        after = decode_cursor(cursor)
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM layers WHERE seq > %s ORDER BY seq LIMIT %s",
                (after, limit + 1),
            ).fetchall()
        return page_of(rows, limit, _row_layer)

    def delete(self, ref: str) -> None:
        with self._connection() as conn:
            cur = conn.execute("DELETE FROM layers WHERE id = %s OR name = %s", (ref, ref))
        if cur.rowcount == 0:
            raise LayerNotFound(ref)

    def count(self) -> int:
        with self._connection() as conn:
            row = conn.execute("SELECT count(*) FROM layers").fetchone()
        return int(row[0]) if row else 0

    def ping(self) -> None:
        with self._connection() as conn:
            conn.execute("SELECT 1 FROM layers LIMIT 1").fetchall()

    def close(self) -> None:
        self._pool.close()


def _next_name(conn: psycopg.Connection[Any], base: str) -> str:
    pattern = f"^{re.escape(base)}_[0-9]+$"
    rows = conn.execute(
        "SELECT name FROM layers WHERE name = %s OR name ~ %s", (base, pattern)
    ).fetchall()
    return keras_next_name(base, (name for (name,) in rows))


def _row_layer(row: tuple[Any, ...]) -> Layer:
    _seq, layer_id, name, spec, created_at = row
    return _layer(layer_id, name, spec, created_at)


def _layer(layer_id: str, name: str, record: dict[str, Any], created_at: datetime) -> Layer:
    return Layer.model_validate({**record, "id": layer_id, "name": name, "created_at": created_at})


def _store_error(exc: psycopg.Error) -> StoreFull | StoreUnavailable:
    """Translate PostgreSQL's failures; a full disk is the one a client can act on."""
    if isinstance(exc, pg_errors.DiskFull):
        return StoreFull("The layer store is out of disk space; nothing was written.")
    return StoreUnavailable("The layer store did not answer; nothing was written.")

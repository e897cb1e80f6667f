"""PostgreSQL store: one database that several replicas (and their workers) share."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from service.errors import LayerNotFound, ModelNotFound, NameConflict, StoreUnavailable
from service.layers.resolve import DEFAULT_NAMES, ResolvedSpec
from service.layers.spec import Layer
from service.store.base import (
    ModelPage,
    Page,
    StoredModel,
    decode_cursor,
    keras_next_name,
    page_of,
    page_rows,
)
from service.store.database import POOL_SIZE, START_TIMEOUT, TIMEOUT, Connection, Database

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS layers (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT NOT NULL CONSTRAINT layers_id_unique UNIQUE,
    name       TEXT NOT NULL CONSTRAINT layers_name_unique UNIQUE,
    spec       JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
)
"""
_MODELS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS models (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       TEXT NOT NULL CONSTRAINT models_name_unique UNIQUE,
    info       JSONB NOT NULL,
    onnx       BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
)
"""
_COLUMNS: Final = "seq, id, name, spec, created_at"
_MODEL_COLUMNS: Final = "seq, name, info, created_at"
_NAME_CONSTRAINT: Final = "layers_name_unique"
_URL: Final = re.compile(r"(?:postgres|postgresql)(?:\+psycopg)?://.*", re.S)
#: Keys of the transaction-level advisory locks this store takes (any fixed 64-bit numbers
#: that other applications on the same database are unlikely to use).
_SCHEMA_LOCK: Final = 0x5D_5C_0001
_NAMES_LOCK: Final = 0x5D_5C_0002
#: A generated name can still collide with a name another process inserts explicitly at the
#: same moment (those do not take the lock); then the next free one is chosen, this often.
_NAME_ATTEMPTS: Final = 8


def postgres_conninfo(database_url: str) -> str | None:
    """The libpq URL a ``postgresql://`` (or ``postgres://``) database URL names, else None."""
    if not _URL.fullmatch(database_url):
        return None
    return database_url.replace("+psycopg://", "://", 1)


class PostgresLayerStore:
    """Layers in a PostgreSQL table, through a ``Database`` (bounded waits, one retry).

    Names are unique by a UNIQUE constraint. Generated names are chosen under a
    transaction-level advisory lock, so creates in any number of processes and replicas never
    pick the same one; the lock is released when the transaction ends, even if a process dies.
    A create carries the id it generated, so running it again after a lost acknowledgement
    finds its own row instead of adding a second one.
    """

    def __init__(
        self,
        conninfo: str,
        pool_size: int = POOL_SIZE,
        timeout: float = TIMEOUT,
        connect_timeout: float = START_TIMEOUT,
    ) -> None:
        self._db = Database(
            conninfo, pool_size=pool_size, timeout=timeout, start_timeout=connect_timeout
        )
        try:
            # A first CREATE TABLE on a busy disk may outlast a request's bound.
            self._db.write(_create_schema, timeout=connect_timeout)
        except BaseException:
            self._db.close()
            raise

    # -- the contract ---------------------------------------------------------------------

    def create(self, spec: ResolvedSpec) -> Layer:
        layer_id = uuid.uuid4().hex
        created_at = datetime.now(UTC)

        def insert(conn: Connection, maybe_applied: bool) -> Layer:
            if maybe_applied:
                mine = _by_id(conn, layer_id)
                if mine is not None:
                    return mine
            # Every create takes the names lock: a model put takes it too, so a layer and a
            # model never end up with one name.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_NAMES_LOCK,))
            name = spec.name or _next_name(conn, DEFAULT_NAMES[spec.kind])
            if _model_named(conn, name):
                raise NameConflict(name)
            record = {**spec.as_dict(), "name": name}
            conn.execute(
                "INSERT INTO layers (id, name, spec, created_at) VALUES (%s, %s, %s, %s)",
                (layer_id, name, Jsonb(record), created_at),
            )
            return _layer(layer_id, name, record, created_at)

        unsure = (
            "The layer store stopped answering while the layer was being committed: it may or "
            f"may not be stored, under the id {layer_id!r} (GET /layers/{layer_id} tells)."
        )
        for _ in range(_NAME_ATTEMPTS):
            try:
                return self._db.write(insert, unsure=unsure)
            except pg_errors.UniqueViolation as exc:
                # A second run can collide with its own first run, committed meanwhile.
                mine = self._db.read(lambda conn: _by_id(conn, layer_id))
                if mine is not None:
                    return mine
                if exc.diag.constraint_name != _NAME_CONSTRAINT:
                    raise StoreUnavailable(
                        "The layer store refused a generated id; nothing was written."
                    ) from None
                if spec.name is not None:
                    raise NameConflict(spec.name) from None
        raise StoreUnavailable("Could not choose a free layer name; try again.")

    def get(self, ref: str) -> Layer:
        row = self._db.read(
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM layers WHERE id = %s OR name = %s LIMIT 1", (ref, ref)
            ).fetchone()
        )
        if row is None:
            raise LayerNotFound(ref)
        return _row_layer(row)

    def list(self, limit: int, cursor: str | None = None) -> Page:
        after = decode_cursor(cursor)
        rows = self._db.read(
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM layers WHERE seq > %s ORDER BY seq LIMIT %s",
                (after, limit + 1),
            ).fetchall()
        )
        return page_of(rows, limit, _row_layer)

    def delete(self, ref: str) -> None:
        def remove(conn: Connection, maybe_applied: bool) -> bool:
            cur = conn.execute("DELETE FROM layers WHERE id = %s OR name = %s", (ref, ref))
            # Gone on a second run after a lost COMMIT: the first run removed it.
            return cur.rowcount > 0 or maybe_applied

        unsure = (
            f"The layer store stopped answering while {ref!r} was being deleted: it may or may "
            "not be deleted; deleting it again is safe."
        )
        if not self._db.write(remove, unsure=unsure):
            raise LayerNotFound(ref)

    def count(self) -> int:
        row = self._db.read(lambda conn: conn.execute("SELECT count(*) FROM layers").fetchone())
        return int(row[0]) if row else 0

    def put_model(self, name: str, data: bytes, info: dict[str, Any]) -> tuple[StoredModel, bool]:
        created_at = datetime.now(UTC)

        def upsert(conn: Connection, maybe_applied: bool) -> tuple[StoredModel, bool]:
            if maybe_applied:
                # The first run's row, if it committed: found, nothing is written again.
                mine = conn.execute(
                    "SELECT created_at FROM models WHERE name = %s AND info->>'sha256' = %s",
                    (name, info["sha256"]),
                ).fetchone()
                if mine is not None:
                    return StoredModel(name, info, mine[0].isoformat()), mine[0] == created_at
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_NAMES_LOCK,))
            if conn.execute("SELECT 1 FROM layers WHERE name = %s", (name,)).fetchone():
                raise NameConflict(name)
            # Running again after a lost COMMIT writes the same bytes: an upsert is idempotent,
            # and the row's created_at (only an insert sets it) tells whether this put made it.
            row = conn.execute(
                "INSERT INTO models (name, info, onnx, created_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (name) DO UPDATE SET info = EXCLUDED.info, onnx = EXCLUDED.onnx "
                "RETURNING created_at",
                (name, Jsonb(info), data, created_at),
            ).fetchone()
            assert row is not None
            return StoredModel(name, info, row[0].isoformat()), row[0] == created_at

        unsure = (
            f"The store stopped answering while model {name!r} was being stored: it may or may "
            "not be stored; storing it again is safe."
        )
        return self._db.write(upsert, unsure=unsure)

    def get_model(self, name: str, *, with_data: bool = False) -> StoredModel:
        extra = ", onnx" if with_data else ""
        row = self._db.read(
            lambda conn: conn.execute(
                f"SELECT {_MODEL_COLUMNS}{extra} FROM models WHERE name = %s", (name,)
            ).fetchone()
        )
        if row is None:
            raise ModelNotFound(name)
        return _row_model(row)

    def list_models(self, limit: int, cursor: str | None = None) -> ModelPage:
        after = decode_cursor(cursor)
        rows = self._db.read(
            lambda conn: conn.execute(
                f"SELECT {_MODEL_COLUMNS} FROM models WHERE seq > %s ORDER BY seq LIMIT %s",
                (after, limit + 1),
            ).fetchall()
        )
        return ModelPage(*page_rows(rows, limit, _row_model))

    def delete_model(self, name: str) -> None:
        def remove(conn: Connection, maybe_applied: bool) -> bool:
            cur = conn.execute("DELETE FROM models WHERE name = %s", (name,))
            return cur.rowcount > 0 or maybe_applied

        unsure = (
            f"The store stopped answering while model {name!r} was being deleted: it may or "
            "may not be deleted; deleting it again is safe."
        )
        if not self._db.write(remove, unsure=unsure):
            raise ModelNotFound(name)

    def ping(self) -> None:
        self._db.read(lambda conn: conn.execute("SELECT 1 FROM layers LIMIT 1").fetchall())

    def close(self) -> None:
        self._db.close()


def _create_schema(conn: Connection, _maybe_applied: bool) -> None:
    # Replicas starting together must not race on CREATE TABLE IF NOT EXISTS.
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
    conn.execute(_SCHEMA)
    conn.execute(_MODELS_SCHEMA)  # a database made before models gains the table


def _by_id(conn: Connection, layer_id: str) -> Layer | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM layers WHERE id = %s", (layer_id,)).fetchone()
    return None if row is None else _row_layer(row)


def _next_name(conn: Connection, base: str) -> str:
    pattern = f"^{re.escape(base)}_[0-9]+$"
    rows = conn.execute(
        "SELECT name FROM layers WHERE name = %s OR name ~ %s "
        "UNION SELECT name FROM models WHERE name = %s OR name ~ %s",
        (base, pattern, base, pattern),
    ).fetchall()
    return keras_next_name(base, (name for (name,) in rows))


def _model_named(conn: Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM models WHERE name = %s", (name,)).fetchone() is not None


def _row_model(row: tuple[Any, ...]) -> StoredModel:
    data = bytes(row[4]) if len(row) > 4 else None
    return StoredModel(row[1], dict(row[2]), row[3].isoformat(), data)


def _row_layer(row: tuple[Any, ...]) -> Layer:
    _seq, layer_id, name, spec, created_at = row
    return _layer(layer_id, name, spec, created_at)


def _layer(layer_id: str, name: str, record: dict[str, Any], created_at: datetime) -> Layer:
    return Layer.model_validate({**record, "id": layer_id, "name": name, "created_at": created_at})

"""SQLite store: one file, safe across threads and processes, nothing to install."""

from __future__ import annotations

import contextlib
import errno
import json
import queue
import re
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from service.errors import (
    LayerNotFound,
    ModelNotFound,
    NameConflict,
    StoreFull,
    StoreUnavailable,
)
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

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS layers (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL UNIQUE,
    spec       TEXT NOT NULL,
    created_at TEXT NOT NULL
)
"""
_MODELS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS models (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL UNIQUE,
    info       TEXT NOT NULL,
    onnx       BLOB NOT NULL,
    created_at TEXT NOT NULL
)
"""
_COLUMNS: Final = "seq, id, name, spec, created_at"
_MODEL_COLUMNS: Final = "seq, name, info, created_at"
_URL: Final = re.compile(r"sqlite:///(?P<path>.+)")
#: How long a writer waits for another process's transaction before giving up (ms).
_BUSY_TIMEOUT_MS: Final = 30_000


def sqlite_path(database_url: str) -> Path | None:
    """The file a ``sqlite:///path`` URL names (``sqlite:////abs`` for an absolute path)."""
    match = _URL.fullmatch(database_url)
    return Path(match["path"]) if match else None


class SqliteLayerStore:
    """Layers in one SQLite file (WAL mode), with a small pool of connections.

    Uniqueness of names is the database's UNIQUE constraint, and generated names are chosen
    inside a ``BEGIN IMMEDIATE`` transaction, so concurrent creates in any number of threads
    or processes cannot hand one name out twice.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._pool: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._closed = False
        with self._connection() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)
            conn.execute(_MODELS_SCHEMA)  # a database made before models gains the table

    # -- connections ----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        # FULL: a 201 means the layer is on disk, even if the machine loses power next.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise StoreUnavailable("The layer store is closed.")
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            conn = _guard(self._connect)
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.rollback()
            raise
        finally:
            if self._closed:
                conn.close()
            else:
                self._pool.put(conn)

    # -- the contract ---------------------------------------------------------------------

    def create(self, spec: ResolvedSpec) -> Layer:
        layer_id = uuid.uuid4().hex
        created_at = datetime.now(UTC)
        with self._connection() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
                name = spec.name or _next_name(conn, DEFAULT_NAMES[spec.kind])
                if _model_named(conn, name):
                    conn.rollback()
                    raise NameConflict(name)
                record = {**spec.as_dict(), "name": name}
                conn.execute(
                    "INSERT INTO layers (id, name, spec, created_at) VALUES (?, ?, ?, ?)",
                    (layer_id, name, json.dumps(record), created_at.isoformat()),
                )
                conn.execute("COMMIT")
            except sqlite3.IntegrityError:
                conn.rollback()
                raise NameConflict(spec.name or "") from None
            except sqlite3.Error as exc:
                raise _store_error(exc) from exc
        return _layer(layer_id, name, record, created_at.isoformat())

    def get(self, ref: str) -> Layer:
        with self._connection() as conn:
            row = _guard(
                conn.execute,
                f"SELECT {_COLUMNS} FROM layers WHERE id = ? OR name = ? LIMIT 1",
                (ref, ref),
            ).fetchone()
        if row is None:
            raise LayerNotFound(ref)
        return _row_layer(row)

    def list(self, limit: int, cursor: str | None = None) -> Page:
        after = decode_cursor(cursor)
        with self._connection() as conn:
            rows = _guard(
                conn.execute,
                f"SELECT {_COLUMNS} FROM layers WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit + 1),
            ).fetchall()
        return page_of(rows, limit, _row_layer)

    def delete(self, ref: str) -> None:
        with self._connection() as conn:
            cur = _guard(conn.execute, "DELETE FROM layers WHERE id = ? OR name = ?", (ref, ref))
        if cur.rowcount == 0:
            raise LayerNotFound(ref)

    def count(self) -> int:
        with self._connection() as conn:
            (n,) = _guard(conn.execute, "SELECT count(*) FROM layers").fetchone()
        return int(n)

    def put_model(self, name: str, data: bytes, info: dict[str, Any]) -> tuple[StoredModel, bool]:
        created_at = datetime.now(UTC).isoformat()
        with self._connection() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
                if conn.execute("SELECT 1 FROM layers WHERE name = ?", (name,)).fetchone():
                    conn.rollback()
                    raise NameConflict(name)
                old = conn.execute(
                    "SELECT created_at FROM models WHERE name = ?", (name,)
                ).fetchone()
                if old is None:
                    conn.execute(
                        "INSERT INTO models (name, info, onnx, created_at) VALUES (?, ?, ?, ?)",
                        (name, json.dumps(info), data, created_at),
                    )
                else:
                    created_at = old[0]
                    conn.execute(
                        "UPDATE models SET info = ?, onnx = ? WHERE name = ?",
                        (json.dumps(info), data, name),
                    )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise _store_error(exc) from exc
        return StoredModel(name, info, created_at), old is None

    def get_model(self, name: str, *, with_data: bool = False) -> StoredModel:
        extra = ", onnx" if with_data else ""
        with self._connection() as conn:
            row = _guard(
                conn.execute,
                f"SELECT {_MODEL_COLUMNS}{extra} FROM models WHERE name = ?",
                (name,),
            ).fetchone()
        if row is None:
            raise ModelNotFound(name)
        return _row_model(row)

    def list_models(self, limit: int, cursor: str | None = None) -> ModelPage:
        after = decode_cursor(cursor)
        with self._connection() as conn:
            rows = _guard(
                conn.execute,
                f"SELECT {_MODEL_COLUMNS} FROM models WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit + 1),
            ).fetchall()
        return ModelPage(*page_rows(rows, limit, _row_model))

    def delete_model(self, name: str) -> None:
        with self._connection() as conn:
            cur = _guard(conn.execute, "DELETE FROM models WHERE name = ?", (name,))
        if cur.rowcount == 0:
            raise ModelNotFound(name)

    def ping(self) -> None:
        with self._connection() as conn:
            _guard(conn.execute, "SELECT 1 FROM layers LIMIT 1").fetchall()

    def close(self) -> None:
        self._closed = True
        first = True
        while True:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                return
            if first:
                # Fold the WAL back into the file now, so a stopped service leaves one file
                # (SQLite also does this when the last connection closes, if it can).
                first = False
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()


def _next_name(conn: sqlite3.Connection, base: str) -> str:
    rows = conn.execute(
        "SELECT name FROM layers WHERE name = ? OR name GLOB ? "
        "UNION SELECT name FROM models WHERE name = ? OR name GLOB ?",
        (base, f"{base}_[0-9]*", base, f"{base}_[0-9]*"),
    ).fetchall()
    return keras_next_name(base, (name for (name,) in rows))


def _model_named(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone() is not None


def _row_model(row: tuple[Any, ...]) -> StoredModel:
    data = bytes(row[4]) if len(row) > 4 else None
    return StoredModel(row[1], json.loads(row[2]), row[3], data)


def _row_layer(row: tuple[Any, ...]) -> Layer:
    _seq, layer_id, name, spec, created_at = row
    return _layer(layer_id, name, json.loads(spec), created_at)


def _layer(layer_id: str, name: str, record: dict[str, Any], created_at: str) -> Layer:
    return Layer.model_validate({**record, "id": layer_id, "name": name, "created_at": created_at})


def _guard(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except sqlite3.Error as exc:
        raise _store_error(exc) from exc


def _store_error(exc: sqlite3.Error) -> StoreFull | StoreUnavailable:
    """Translate SQLite's failures; a full disk is the one a client can do something about."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "disk is full" in str(exc) or _is_enospc(exc):
        return StoreFull("The layer store is out of disk space; nothing was written.")
    return StoreUnavailable("The layer store did not answer; nothing was written.")


def _is_enospc(exc: BaseException) -> bool:
    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, OSError) and cause.errno == errno.ENOSPC

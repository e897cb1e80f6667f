"""Every store backend against the one contract (service/store/base.py): SQLite on a real file,
PostgreSQL on a real server the session starts."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.core.config import DataFormat, Kind
from service.errors import InvalidCursor, LayerNotFound, NameConflict, StoreUnavailable
from service.layers.resolve import ResolvedSpec
from service.store import LayerStore, PostgresLayerStore, SqliteLayerStore, open_store
from service.store.sqlite import sqlite_path
from tests.postgres import PostgresServer


def spec(name: str | None = None, kind: Kind = Kind.SPATIAL_2D, **extra: object) -> ResolvedSpec:
    fields: dict[str, object] = {
        "kind": kind,
        "rate": 0.5,
        "data_format": DataFormat.CHANNELS_LAST,
        "batch_size": None,
        "name": name,
        "trainable": True,
        "seed": None,
        "dtype": None,
        "noise_shape": None,
    }
    fields.update(extra)
    return ResolvedSpec(**fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Backend:
    """One empty database; ``open`` gives a new store on it, as another process would."""

    name: str
    url: str

    def open(self) -> LayerStore:
        return open_store(self.url)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite:///{tmp_path}/sub/layers.sqlite3")
    server: PostgresServer = request.getfixturevalue("postgres")
    return Backend("postgres", server.new_database())


@pytest.fixture
def store(backend: Backend) -> Iterator[LayerStore]:
    s = backend.open()
    yield s
    s.close()


def test_open_store_picks_the_backend_by_scheme(tmp_path: Path, postgres: PostgresServer) -> None:
    lite = open_store(f"sqlite:///{tmp_path}/x.sqlite3")
    assert isinstance(lite, SqliteLayerStore)
    lite.close()
    pg = open_store(postgres.url().replace("postgresql://", "postgresql+psycopg://"))
    assert isinstance(pg, PostgresLayerStore)
    pg.close()
    with pytest.raises(ValueError, match="Unsupported database URL scheme 'mysql'") as err:
        open_store("mysql://user:secret@localhost/x")
    assert "secret" not in str(err.value)  # a URL's password never lands in a message


def test_an_unreachable_postgres_is_store_unavailable() -> None:
    from harness.process import free_port

    with pytest.raises(StoreUnavailable, match="refused or lost the connection") as err:
        PostgresLayerStore(f"postgresql://nobody@127.0.0.1:{free_port()}/none", connect_timeout=0.5)
    assert err.value.headers == {"Retry-After": "1"}


def test_create_get_by_id_and_name(store: LayerStore) -> None:
    layer = store.create(spec("a", seed=3, noise_shape=None))
    assert store.get(layer.id) == layer == store.get("a")
    assert layer.seed == 3 and layer.kind is Kind.SPATIAL_2D and layer.weights == []


def test_generated_names_follow_keras(store: LayerStore) -> None:
    names = [store.create(spec(kind=Kind.DROPOUT)).name for _ in range(3)]
    assert names == ["dropout", "dropout_1", "dropout_2"]
    store.create(spec("dropout_7"))
    assert store.create(spec(kind=Kind.DROPOUT)).name == "dropout_8"
    assert store.create(spec(kind=Kind.SPATIAL_3D)).name == "spatial_dropout3d"
    store.create(spec("dropout_x"))  # not a Keras suffix: ignored when numbering
    store.create(spec("dropoutX_9"))  # not even the base name
    assert store.create(spec(kind=Kind.DROPOUT)).name == "dropout_9"


def test_duplicate_name_conflicts_and_changes_nothing(store: LayerStore) -> None:
    first = store.create(spec("dup"))
    with pytest.raises(NameConflict):
        store.create(spec("dup", seed=1))
    assert store.get("dup") == first
    assert store.count() == 1


def test_concurrent_creates_one_name_exactly_one_wins(backend: Backend) -> None:
    stores = [backend.open() for _ in range(4)]  # as if four processes

    def attempt(i: int) -> str:
        try:
            stores[i % 4].create(spec("same"))
            return "created"
        except NameConflict:
            return "conflict"

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(attempt, range(64)))
    finally:
        for s in stores:
            s.close()
    assert results.count("created") == 1 and results.count("conflict") == 63


def test_concurrent_generated_names_are_all_distinct(backend: Backend) -> None:
    stores = [backend.open() for _ in range(2)]  # two processes, each with its threads
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            names = list(pool.map(lambda i: stores[i % 2].create(spec()).name, range(40)))
    finally:
        for s in stores:
            s.close()
    assert len(set(names)) == 40
    assert "spatial_dropout2d" in names and "spatial_dropout2d_39" in names


def test_pages_cover_every_layer_once(store: LayerStore) -> None:
    ids = [store.create(spec()).id for _ in range(7)]
    seen, cursor = [], None
    while True:
        page = store.list(3, cursor)
        seen += [layer.id for layer in page.layers]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids
    with pytest.raises(InvalidCursor):
        store.list(3, "not-a-cursor")


def test_delete(store: LayerStore) -> None:
    layer = store.create(spec("gone"))
    assert store.count() == 1
    store.delete(layer.id)
    assert store.count() == 0
    with pytest.raises(LayerNotFound):
        store.get("gone")
    with pytest.raises(LayerNotFound):
        store.delete("gone")


def test_layers_survive_reopening(backend: Backend) -> None:
    first = backend.open()
    layer = first.create(spec("kept", kind=Kind.DROPOUT, noise_shape=(None, 1)))
    first.close()
    second = backend.open()
    assert second.get("kept") == layer
    assert second.get("kept").noise_shape == [None, 1]
    second.close()
    path = sqlite_path(backend.url)
    if path is not None:
        assert not path.with_name(path.name + "-wal").exists()  # checkpointed on close
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            conn.close()


def test_ping_and_closed_store(store: LayerStore) -> None:
    store.ping()
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.ping()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.get("anything")

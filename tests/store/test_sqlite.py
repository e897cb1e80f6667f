"""The SQLite store against its contract, on a real file."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.core.config import DataFormat, Kind
from service.errors import InvalidCursor, LayerNotFound, NameConflict
from service.layers.resolve import ResolvedSpec
from service.store import SqliteLayerStore, open_store


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


@pytest.fixture
def store(tmp_path: Path) -> SqliteLayerStore:
    s = SqliteLayerStore(tmp_path / "sub" / "layers.sqlite3")
    yield s  # type: ignore[misc]
    s.close()


def test_open_store_reads_the_url(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/x.sqlite3")
    assert isinstance(store, SqliteLayerStore)
    store.close()
    with pytest.raises(ValueError, match="Unsupported database URL"):
        open_store("mysql://localhost/x")


def test_create_get_by_id_and_name(store: SqliteLayerStore) -> None:
    layer = store.create(spec("a", seed=3, noise_shape=None))
    assert store.get(layer.id) == layer == store.get("a")
    assert layer.seed == 3 and layer.kind is Kind.SPATIAL_2D and layer.weights == []


def test_generated_names_follow_keras(store: SqliteLayerStore) -> None:
    names = [store.create(spec(kind=Kind.DROPOUT)).name for _ in range(3)]
    assert names == ["dropout", "dropout_1", "dropout_2"]
    store.create(spec("dropout_7"))
    assert store.create(spec(kind=Kind.DROPOUT)).name == "dropout_8"
    assert store.create(spec(kind=Kind.SPATIAL_3D)).name == "spatial_dropout3d"
    store.create(spec("dropout_x"))  # not a Keras suffix: ignored when numbering
    assert store.create(spec(kind=Kind.DROPOUT)).name == "dropout_9"


def test_duplicate_name_conflicts_and_changes_nothing(store: SqliteLayerStore) -> None:
    first = store.create(spec("dup"))
    with pytest.raises(NameConflict):
        store.create(spec("dup", seed=1))
    assert store.get("dup") == first
    assert store.count() == 1


def test_concurrent_creates_one_name_exactly_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "race.sqlite3"
    stores = [SqliteLayerStore(path) for _ in range(4)]  # as if four processes

    def attempt(i: int) -> str:
        try:
            stores[i % 4].create(spec("same"))
            return "created"
        except NameConflict:
            return "conflict"

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(attempt, range(64)))
    assert results.count("created") == 1 and results.count("conflict") == 63
    for s in stores:
        s.close()


def test_concurrent_generated_names_are_all_distinct(store: SqliteLayerStore) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        names = list(pool.map(lambda _: store.create(spec()).name, range(40)))
    assert len(set(names)) == 40
    assert "spatial_dropout2d" in names and "spatial_dropout2d_39" in names


def test_pages_cover_every_layer_once(store: SqliteLayerStore) -> None:
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


def test_delete(store: SqliteLayerStore) -> None:
    layer = store.create(spec("gone"))
    store.delete(layer.id)
    with pytest.raises(LayerNotFound):
        store.get("gone")
    with pytest.raises(LayerNotFound):
        store.delete("gone")


def test_layers_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "persist.sqlite3"
    first = SqliteLayerStore(path)
    layer = first.create(spec("kept", kind=Kind.DROPOUT, noise_shape=(None, 1)))
    first.close()
    second = SqliteLayerStore(path)
    assert second.get("kept") == layer
    assert second.get("kept").noise_shape == [None, 1]
    second.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_ping_and_closed_store(store: SqliteLayerStore) -> None:
    store.ping()
    store.close()
    with pytest.raises(Exception, match="closed"):
        store.ping()

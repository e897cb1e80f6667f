"""The model half of the store contract, on SQLite and PostgreSQL alike (the layer half's
fixtures): bytes kept whole, replaced atomically, names shared with no layer."""

from __future__ import annotations

import hashlib
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.errors import InvalidCursor, ModelNotFound, NameConflict
from service.store import LayerStore, open_store
from tests.store.test_contract import Backend, backend, spec, store  # noqa: F401 (fixtures)


def info(data: bytes) -> dict[str, object]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "inputs": []}


def test_put_get_replace_delete(store: LayerStore) -> None:  # noqa: F811
    data = bytes(range(256)) * 100 + b"\0"
    stored, created = store.put_model("m", data, info(data))
    assert created and stored.name == "m"
    got = store.get_model("m", with_data=True)
    assert got.data == data and got.info == info(data)
    assert store.get_model("m").data is None
    other = b"other model"
    replaced, created = store.put_model("m", other, info(other))
    assert not created and replaced.created_at == stored.created_at
    assert store.get_model("m", with_data=True).data == other
    store.delete_model("m")
    with pytest.raises(ModelNotFound):
        store.get_model("m")
    with pytest.raises(ModelNotFound):
        store.delete_model("m")


def test_a_model_and_a_layer_never_share_a_name(store: LayerStore) -> None:  # noqa: F811
    store.create(spec("taken"))
    with pytest.raises(NameConflict):
        store.put_model("taken", b"x", info(b"x"))
    store.put_model("model", b"x", info(b"x"))
    with pytest.raises(NameConflict):
        store.create(spec("model"))
    # A generated layer name skips a model's.
    store.put_model("spatial_dropout2d", b"x", info(b"x"))
    assert store.create(spec()).name == "spatial_dropout2d_1"


def test_concurrent_puts_of_a_layer_name_and_a_model_name_one_wins(
    backend: Backend,  # noqa: F811
) -> None:
    stores = [backend.open() for _ in range(4)]

    def attempt(i: int) -> str:
        try:
            if i % 2:
                stores[i % 4].create(spec("race"))
                return "layer"
            stores[i % 4].put_model("race", b"m", info(b"m"))
            return "model"
        except NameConflict:
            return "conflict"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(16)))
    winners = {r for r in results if r != "conflict"}
    assert len(winners) == 1, results
    for s in stores:
        s.close()


def test_pages_of_models(store: LayerStore) -> None:  # noqa: F811
    for i in range(5):
        store.put_model(f"p{i}", b"x", info(b"x"))
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list_models(2, cursor)
        seen += [m.name for m in page.models]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"p{i}" for i in range(5)]
    with pytest.raises(InvalidCursor):
        store.list_models(2, "x")


def test_a_database_made_before_models_gains_the_table(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE layers (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
        "name TEXT NOT NULL UNIQUE, spec TEXT NOT NULL, created_at TEXT NOT NULL)"
    )
    conn.commit()
    conn.close()
    opened = open_store(f"sqlite:///{path}")
    opened.put_model("m", b"x", info(b"x"))
    assert opened.get_model("m", with_data=True).data == b"x"
    opened.close()

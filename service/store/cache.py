"""A store wrapper that remembers layers read in the last moments.

/apply and /v2 infer read their layer on every call; a layer is immutable once stored, so a
short memory saves a database round trip per request (most of the cost of a small request).
The price is bounded staleness: a layer deleted through *another* process may still be
applied here for up to ``ttl`` seconds. Deletes through this process forget at once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Final

from service.layers.resolve import ResolvedSpec
from service.layers.spec import Layer
from service.store.base import LayerStore, ModelPage, Page, StoredModel

_MAX_ENTRIES: Final = 4096


class CachingLayerStore:
    """``store``, with ``get`` answered from memory for ``ttl`` seconds after a read."""

    def __init__(self, store: LayerStore, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._entries: OrderedDict[str, tuple[float, Layer]] = OrderedDict()
        self._lock = threading.Lock()

    def cached(self, ref: str) -> Layer | None:
        """The layer if it was read less than ``ttl`` ago, without touching the store."""
        with self._lock:
            entry = self._entries.get(ref)
            if entry is None:
                return None
            if time.monotonic() - entry[0] > self.ttl:
                del self._entries[ref]
                return None
            return entry[1]

    def get(self, ref: str) -> Layer:
        layer = self.cached(ref)
        if layer is None:
            layer = self.store.get(ref)
            if self.ttl > 0:
                with self._lock:
                    self._entries[ref] = (time.monotonic(), layer)
                    if len(self._entries) > _MAX_ENTRIES:
                        self._entries.popitem(last=False)
        return layer

    def delete(self, ref: str) -> None:
        self.store.delete(ref)
        with self._lock:  # the layer may be cached under its id and its name: forget all
            self._entries.clear()

    def create(self, spec: ResolvedSpec) -> Layer:
        return self.store.create(spec)

    def list(self, limit: int, cursor: str | None = None) -> Page:
        return self.store.list(limit, cursor)

    def count(self) -> int:
        return self.store.count()

    def put_model(self, name: str, data: bytes, info: dict[str, Any]) -> tuple[StoredModel, bool]:
        return self.store.put_model(name, data, info)

    def get_model(self, name: str, *, with_data: bool = False) -> StoredModel:
        return self.store.get_model(name, with_data=with_data)

    def list_models(self, limit: int, cursor: str | None = None) -> ModelPage:
        return self.store.list_models(limit, cursor)

    def delete_model(self, name: str) -> None:
        self.store.delete_model(name)

    def ping(self) -> None:
        self.store.ping()

    def close(self) -> None:
        self.store.close()

"""A store wrapper that remembers the layers and models it read.

/apply and /v2 infer read their layer on every call; a layer is immutable once stored, so a
short memory saves a database round trip per request (most of the cost of a small request).
The price is bounded staleness: a layer deleted through *another* process may still be
applied here for up to ``ttl`` seconds. Deletes through this process forget at once.

What was read is also *held* past ``ttl``: while the store does not answer (a failover, a cut
link), a layer or model this process already served keeps being served from memory, since
a layer never changes once stored. Only a delete (or a model's replacement) could make it
wrong, and none can be made while the store is away; one made meanwhile through another
replica that still reaches it shows here as soon as the store answers again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final, TypeVar

from service.errors import LayerNotFound, ModelNotFound, StoreUnavailable
from service.layers.resolve import ResolvedSpec
from service.layers.spec import Layer
from service.store.base import LayerStore, ModelPage, Page, StoredModel

_T = TypeVar("_T")

_MAX_ENTRIES: Final = 4096
#: After the store failed to answer, held copies answer for this long without asking it
#: again, so that a store that hangs (rather than refuses) costs each request nothing.
_AWAY_SECONDS: Final = 1.0


class CachingLayerStore:
    """``store``, with ``get`` answered from memory for ``ttl`` seconds after a read, and
    layers and model descriptions held for when the store does not answer."""

    def __init__(self, store: LayerStore, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._entries: OrderedDict[str, tuple[float, Layer]] = OrderedDict()
        self._models: OrderedDict[str, StoredModel] = OrderedDict()
        self._lock = threading.Lock()
        self._away_until = 0.0

    def cached(self, ref: str) -> Layer | None:
        """The layer if it was read less than ``ttl`` ago, without touching the store."""
        with self._lock:
            entry = self._entries.get(ref)
        if entry is None or time.monotonic() - entry[0] > self.ttl:
            return None
        return entry[1]

    def get(self, ref: str, *, held_ok: bool = False) -> Layer:
        """The layer; with ``held_ok``, the copy this process holds while the store does not
        answer (what serves requests; the layer routes say the store is away instead)."""
        layer = self.cached(ref)
        if layer is not None:
            return layer
        with self._lock:
            entry = self._entries.get(ref) if held_ok else None
        held = None if entry is None else entry[1]
        return self._read(
            lambda: self.store.get(ref),
            held,
            self._entries,
            ref,
            lambda layer: (time.monotonic(), layer),
        )

    def _read(
        self,
        read: Callable[[], _T],
        held: _T | None,
        entries: OrderedDict[str, Any],
        key: str,
        entry: Callable[[_T], Any],
    ) -> _T:
        """``read()`` from the store, remembered in ``entries`` as ``entry(value)``; or
        ``held`` (when there is one) while the store does not answer. A ``key`` the store no
        longer has is forgotten."""
        if held is not None and self._away():
            return held
        try:
            value = read()
        except StoreUnavailable:
            self._away_until = time.monotonic() + _AWAY_SECONDS
            if held is None:
                raise
            return held
        except (LayerNotFound, ModelNotFound):
            with self._lock:
                entries.pop(key, None)
            raise
        _remember(self._lock, entries, key, entry(value))
        return value

    def _away(self) -> bool:
        """Whether the store failed to answer a moment ago."""
        return time.monotonic() < self._away_until

    def held_model(self, name: str) -> StoredModel | None:
        """Model ``name``'s description as last read here, if it was."""
        with self._lock:
            return self._models.get(name)

    def delete(self, ref: str) -> None:
        self.store.delete(ref)
        with self._lock:  # the layer is held under its id and its name: forget both
            gone = [k for k, (_, layer) in self._entries.items() if ref in (layer.id, layer.name)]
            for key in gone:
                del self._entries[key]

    def create(self, spec: ResolvedSpec) -> Layer:
        layer = self.store.create(spec)
        now = time.monotonic()
        for ref in (layer.name, layer.id):  # what this process made, it holds
            _remember(self._lock, self._entries, ref, (now, layer))
        return layer

    def list(self, limit: int, cursor: str | None = None) -> Page:
        return self.store.list(limit, cursor)

    def count(self) -> int:
        return self.store.count()

    def put_model(self, name: str, data: bytes, info: dict[str, Any]) -> tuple[StoredModel, bool]:
        stored = self.store.put_model(name, data, info)
        model = stored[0]
        _remember(self._lock, self._models, name, replace(model, data=None))
        return stored

    def get_model(
        self, name: str, *, with_data: bool = False, held_ok: bool = False
    ) -> StoredModel:
        """The model, from the store; with ``held_ok``, its description from memory while the
        store does not answer, if it was read here before (never its bytes: the session is
        kept)."""
        held = self.held_model(name) if held_ok and not with_data else None
        return self._read(
            lambda: self.store.get_model(name, with_data=with_data),
            held,
            self._models,
            name,
            lambda model: replace(model, data=None),  # the bytes stay in the store
        )

    def list_models(self, limit: int, cursor: str | None = None) -> ModelPage:
        return self.store.list_models(limit, cursor)

    def delete_model(self, name: str) -> None:
        self.store.delete_model(name)
        with self._lock:
            self._models.pop(name, None)

    def ping(self) -> None:
        self.store.ping()

    def close(self) -> None:
        self.store.close()


def _remember(lock: threading.Lock, entries: OrderedDict[str, Any], key: str, value: Any) -> None:
    """Keep ``value`` under ``key``, the oldest entries dropped past ``_MAX_ENTRIES``."""
    with lock:
        entries[key] = value
        entries.move_to_end(key)
        if len(entries) > _MAX_ENTRIES:
            entries.popitem(last=False)

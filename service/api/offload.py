"""Where a request's work runs: on the event loop when it is tiny, else in a worker thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

from service.layers.spec import Layer
from service.store import LayerStore
from service.store.cache import CachingLayerStore

_T = TypeVar("_T")

#: Bodies up to this size are computed on the event loop: a thread hop costs more than the
#: work (tens of microseconds of decoding and dropout), and the loop is not held for long.
INLINE_BYTES = 64 * 1024


async def maybe_in_thread(size: int, fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)``, inline for a body of ``size`` up to INLINE_BYTES, else in a thread."""
    if size <= INLINE_BYTES:
        return fn(*args)
    return await run_in_threadpool(fn, *args)


async def stored_layer(store: LayerStore, ref: str) -> Layer:
    """The layer, from the process's short memory when it has it, else from the store (in a
    worker thread: the store blocks)."""
    if isinstance(store, CachingLayerStore):
        layer = store.cached(ref)
        if layer is not None:
            return layer
    return await run_in_threadpool(store.get, ref)

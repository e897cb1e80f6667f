"""The onnxruntime engine: run a layer through its exported graph, as /apply's numpy kernel does.

Same contract as ``service.core.kernel.apply`` (same errors, same output and mask bit for
bit), computed by onnxruntime from the model ``service.onnx.graph`` builds.

Why a training call gets a fresh session: onnxruntime's Dropout seeds its generator from the
node's ``seed`` attribute when the session is created, and every training run advances it by
one (run j draws the stream of ``seed + j - 1``); nothing rewinds it. A used session therefore
only serves a later call whose stream seed is the next one, and calls do not ask for that:
user seeds are hashed (``mix_seed(7) + 1`` is not the stream of 7 again, nor of 8) and a
sample_offset multiplies the stream seed (see ``stream_seed_at``). Keeping used sessions
would hold memory for a cache that never hits, or, reused naively, answer with the wrong
mask. So the model (cheap bytes) is cached per stream seed, and each training call opens a
session on it (~1.5 ms with one thread) and drops it after one run. Inference never runs
Dropout (the graph's If takes the identity branch), so one live session per graph serves
every inference call, concurrently (``InferenceSession.run`` is thread-safe).

Every session allocates from one process-wide onnxruntime arena (``use_env_allocators``):
a fresh session would otherwise map its buffers anew, which costs more than the run itself
for large tensors (measured: 90 ms against 22 ms for a 32x64x64x64 float32 tensor). The
arena keeps the memory of the largest call for reuse; it is not returned to the system.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any, Final, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from service.core import kernel, rng
from service.core.config import DropoutConfig
from service.core.dtypes import dtype_name
from service.errors import UnsupportedDtype, UnsupportedOnnxDtype
from service.onnx.graph import ONNX_DTYPES, REFUSED_DTYPES, GraphSpec, build_model
from service.onnx.opsets import DEFAULT_OPSET

_PROVIDERS: Final = ["CPUExecutionProvider"]
K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class GraphKey:
    """What a graph depends on, but its seed: the layer's numbers, the rank and the dtype."""

    config: DropoutConfig
    rank: int
    dtype: str
    opset: int


class _Lru(Generic[K, V]):
    """A small thread-safe LRU map; ``make`` runs outside the lock (two racers may both build)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, make: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class OnnxEngine:
    """Runs layers through their exported graphs in onnxruntime; one per app, closed with it."""

    def __init__(self, *, opset: int = DEFAULT_OPSET, models: int = 256, sessions: int = 32):
        _register_shared_arena()
        self.opset = opset
        self._models: _Lru[tuple[GraphKey, int], bytes] = _Lru(models)
        self._inference: _Lru[GraphKey, Any] = _Lru(sessions)

    def apply(
        self,
        config: DropoutConfig,
        x: NDArray[Any],
        *,
        training: bool,
        seed: int,
        sample_offset: int = 0,
    ) -> kernel.DropoutResult:
        """What ``kernel.apply`` answers, computed by onnxruntime (a copy even when identity)."""
        if sample_offset < 0:
            raise ValueError(f"sample_offset must be >= 0, got {sample_offset}")
        name = dtype_name(x.dtype)
        if name in REFUSED_DTYPES:
            raise UnsupportedOnnxDtype(name, REFUSED_DTYPES[name])
        if name not in ONNX_DTYPES or not x.dtype.isnative:
            raise UnsupportedDtype(x.dtype)
        shape = kernel.mask_shape(config, x.shape)  # the kernel's checks and messages
        key = GraphKey(_graph_config(config), x.ndim, name, self.opset)
        if not training:
            session = self._inference.get(key, lambda: _session(self._model(key, 1)))
            output, mask = session.run(None, {"X": _c_order(x)})
        else:
            stream = stream_seed_at(config, shape, rng.mix_seed(seed), sample_offset)
            session = _session(self._model(key, stream))  # one run only: see the module doc
            feeds = {"X": _c_order(x), "training_mode": np.array(True)}
            output, mask = session.run(None, feeds)
        return kernel.DropoutResult(output=output, mask=mask)

    def close(self) -> None:
        """Drop every cached model and session."""
        self._models.clear()
        self._inference.clear()

    def _model(self, key: GraphKey, stream_seed: int) -> bytes:
        def make() -> bytes:
            spec = GraphSpec(key.config, key.rank, key.dtype, key.opset, stream_seed)
            serialized: bytes = build_model(spec).SerializeToString()
            return serialized

        return self._models.get((key, stream_seed), make)


def stream_seed_at(
    config: DropoutConfig, mask_shape: tuple[int, ...], stream_seed: int, sample_offset: int
) -> int:
    """The Dropout seed whose first draw is the kernel's first draw at ``sample_offset``.

    The kernel starts a batch at draw ``first = kernel.first_draw(...)`` of the stream. Draw
    k of minstd from state s is ``s * a**k mod m``, so a stream started at state
    ``s * a**(first - 1) mod m`` (never 0: m is prime) draws exactly draws
    ``first, first + 1, ...`` of s.
    """
    first = kernel.first_draw(config, mask_shape, sample_offset)
    state = rng.engine_state(stream_seed)
    return state * pow(rng.MULTIPLIER, first - 1, rng.MODULUS) % rng.MODULUS


def _c_order(x: NDArray[Any]) -> NDArray[Any]:
    """x, copied only if it is not C-ordered (np.ascontiguousarray would make a scalar 1-d)."""
    return x if x.flags.c_contiguous else np.require(x, requirements="C")


def _graph_config(config: DropoutConfig) -> DropoutConfig:
    """The config without what the graph ignores (name, batch_size), so layers share models."""
    return DropoutConfig(config.kind, config.rate, config.data_format, config.noise_shape)


def _session(model: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    # One thread: a session per call would otherwise start a thread pool per call, and the
    # server already runs calls side by side.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.use_env_allocators", "1")
    return ort.InferenceSession(model, options, providers=_PROVIDERS)


@cache
def _register_shared_arena() -> None:
    """Register the process-wide CPU arena that every session allocates from (once)."""
    import onnxruntime as ort

    memory = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    # Grow by what is asked (strategy 1, kSameAsRequested), not by doubling.
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, 1, -1, -1))

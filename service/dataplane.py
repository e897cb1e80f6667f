"""The data plane: what every protocol does once HTTP is out of the way.

One ``DataPlane`` per app, opened in its lifespan, owns the layer store (behind a short-lived
cache), the engines that run a layer (the numpy kernel, onnxruntime) and the request limits.
``/apply`` (JSON and ``.npy``) and V2 infer call it; routes only translate HTTP to these calls
and their answers back (MLServer's ``handlers/dataplane.py`` plays the same part there).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import numpy as np
from numpy.typing import NDArray
from starlette.concurrency import run_in_threadpool

from service import errors, telemetry
from service.compose import compose
from service.core import kernel
from service.core.config import DataFormat, DropoutConfig
from service.core.dtypes import V2_DATATYPES
from service.inference import (
    MODEL_VERSION,
    PLATFORM,
    InferRequest,
    InferResult,
    ModelMetadata,
    TensorMetadata,
)
from service.layers.resolve import ResolvedSpec, dropout_config, resolve_body
from service.layers.signature import signature
from service.layers.spec import KerasLayerConfig, Layer, LayerCreate
from service.onnx.engine import OnnxEngine
from service.params import Engine
from service.settings import Settings
from service.store import LayerStore, open_store
from service.store.cache import CachingLayerStore

_T = TypeVar("_T")

#: Seeds the server draws stay below 2**53, so a JavaScript client can replay them exactly.
DRAWN_SEED_BITS: Final = 53

#: Bodies up to this size are computed on the event loop: a thread hop costs more than the
#: work (tens of microseconds of decoding and dropout), and the loop is not held for long.
INLINE_BYTES: Final = 64 * 1024

#: The outputs a layer served as a model has: the result, and its keep mask on request.
LAYER_OUTPUT: Final = "output"
LAYER_MASK: Final = "mask"
LAYER_OUTPUTS: Final = (LAYER_OUTPUT, LAYER_MASK)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may ask of the server."""

    max_body_bytes: int
    max_tensor_elements: int
    max_model_nodes: int


@dataclass(frozen=True, slots=True)
class Applied:
    """A layer's answer, with the seed used so that the call can be replayed."""

    output: NDArray[np.generic]
    mask: NDArray[np.bool_]
    seed: int
    layer_name: str | None
    config: DropoutConfig

    def mask_matrix(self) -> NDArray[np.bool_]:
        return kernel.mask_matrix(self.config, self.mask)


def choose_seed(requested: int | None, layer_seed: int | None) -> int:
    """The request's seed wins, then the layer's; else a fresh one from OS entropy."""
    if requested is not None:
        return requested
    if layer_seed is not None:
        return layer_seed
    return secrets.randbits(DRAWN_SEED_BITS)


def layer_name(layer: Layer | ResolvedSpec) -> str | None:
    """A stored layer's name; an inline spec's own name, or None: nothing was stored, so a
    generated name would name no layer."""
    return layer.name


def layer_metadata(layer: Layer) -> ModelMetadata:
    """A stored layer served as a model: its one input, its output and keep mask."""
    sig = signature(layer)
    datatype = V2_DATATYPES.get(sig.dtype, "FP32")
    return ModelMetadata(
        name=layer.name,
        versions=(MODEL_VERSION,),
        platform=PLATFORM,
        inputs=(TensorMetadata("input", datatype, tuple(sig.input_shape)),),
        outputs=(
            TensorMetadata(LAYER_OUTPUT, datatype, tuple(sig.input_shape)),
            TensorMetadata(LAYER_MASK, "BOOL", tuple(sig.mask_shape)),
        ),
        parameters={
            "kind": layer.kind.value,
            "rate": layer.rate,
            "data_format": layer.data_format and layer.data_format.value,
        },
    )


class DataPlane:
    """The store, the engines and the limits, behind the operations the protocols share."""

    def __init__(
        self,
        store: LayerStore,
        *,
        limits: Limits,
        data_format: DataFormat,
        layer_cache_seconds: float = 0.0,
        onnx: OnnxEngine | None = None,
    ) -> None:
        self._layers = CachingLayerStore(store, ttl=layer_cache_seconds)
        self.limits = limits
        self.data_format = data_format
        self.onnx = onnx if onnx is not None else OnnxEngine()

    @classmethod
    def open(cls, settings: Settings) -> DataPlane:
        """The data plane ``settings`` describe; its store is opened now."""
        return cls(
            open_store(
                settings.database_url,
                pool_size=settings.database_pool_size,
                timeout=settings.database_timeout_seconds,
            ),
            limits=Limits(
                settings.max_body_bytes, settings.max_tensor_elements, settings.max_model_nodes
            ),
            data_format=settings.data_format,
            layer_cache_seconds=settings.layer_cache_seconds,
        )

    def close(self) -> None:
        self.onnx.close()
        self._layers.close()

    @property
    def store(self) -> LayerStore:
        """The layer store (reads of one layer answered from the short memory)."""
        return self._layers

    # -- finding what to run --------------------------------------------------------------

    async def layer(self, ref: str) -> Layer:
        """The stored layer ``ref`` names (id or name): from the process's short memory when
        it has it, else from the store, in a worker thread (the store blocks)."""
        layer = self._layers.cached(ref)
        if layer is not None:
            return layer
        return await run_in_threadpool(self._layers.get, ref)

    async def model(self, name: str, version: str | None = None) -> Layer:
        """What the Open Inference Protocol serves as model ``name`` (at ``version``, when the
        request names one): a stored layer, whose only version is ``MODEL_VERSION``."""
        layer = await self.layer(name)
        if version is not None and version != MODEL_VERSION:
            raise errors.ModelVersionNotFound(name, version)
        return layer

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether model ``name`` can answer infer calls (raises ModelNotFound-like errors
        when there is no such model)."""
        await self.model(name, version)
        return True

    async def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        """The protocol's metadata of model ``name``: its inputs and outputs."""
        return layer_metadata(await self.model(name, version))

    async def infer(self, name: str, version: str | None, request: InferRequest) -> InferResult:
        """Run model ``name`` on ``request``: in a worker thread for a large request."""
        layer = await self.model(name, version)
        return await self.run(request.nbytes, self.infer_layer, layer, request)

    def infer_layer(self, layer: Layer, request: InferRequest) -> InferResult:
        """A layer as a model: one input, outputs ``output`` and (when asked) ``mask``.

        The input is given up: the kernel may write its answer over it.
        """
        if len(request.inputs) != 1:
            raise errors.InvalidInferRequest(
                "A layer model takes exactly one input tensor in `inputs`."
            )
        wanted = request.outputs or (LAYER_OUTPUT,)
        for out in wanted:
            if out not in LAYER_OUTPUTS:
                raise errors.InvalidInferRequest(
                    f"Unknown output {out!r}; a layer model has outputs {', '.join(LAYER_OUTPUTS)}."
                )
        params = request.parameters
        if params.mc_samples is not None or params.mc_statistics:
            raise errors.InvalidInferRequest(
                f"{layer.name!r} is a layer: mc_samples and mc_statistics apply to models."
            )
        (x,) = request.inputs.values()
        applied = self.apply(
            layer,
            x,
            training=params.training,
            seed=params.seed,
            sample_offset=params.sample_offset,
            engine=params.engine,
            in_place=True,
        )
        produced = {LAYER_OUTPUT: applied.output}
        if LAYER_MASK in wanted:
            produced[LAYER_MASK] = applied.mask_matrix()
        return InferResult(
            model_name=layer.name,
            model_version=MODEL_VERSION,
            request_id=request.request_id,
            parameters={"seed": applied.seed, "training": params.training},
            outputs={out: produced[out] for out in wanted},
        )

    def inline(self, spec: LayerCreate | KerasLayerConfig) -> ResolvedSpec:
        """A layer given in the request itself, checked and resolved as ``POST /layers`` does."""
        return resolve_body(spec, self.data_format)

    # -- running it -----------------------------------------------------------------------

    async def run(self, size: int, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` for a request of ``size`` bytes: inline up to INLINE_BYTES, else in
        a worker thread, so that a large tensor never holds the event loop."""
        if size <= INLINE_BYTES:
            return fn(*args)
        return await run_in_threadpool(fn, *args)

    async def compose(
        self, ref: str, model: bytes, *, after: Sequence[str], seed: int | None
    ) -> tuple[bytes, int]:
        """The stored layer ``ref`` inserted into ``model`` after each tensor of ``after``, and
        the seed used (the request's, else the layer's, else drawn); the work runs in a thread."""
        layer = await self.layer(ref)
        used = choose_seed(seed, layer.seed)
        composed = await run_in_threadpool(
            compose, model, layer, after=after, seed=used, max_nodes=self.limits.max_model_nodes
        )
        return composed, used

    def apply(
        self,
        layer: Layer | ResolvedSpec,
        x: NDArray[np.generic],
        *,
        training: bool,
        seed: int | None,
        sample_offset: int,
        engine: Engine = "numpy",
        in_place: bool = False,
    ) -> Applied:
        """Run ``layer`` on ``x`` with ``engine``; both engines give the same answer bit for bit.

        ``in_place`` lets the numpy kernel write its output over ``x`` (when x is writable):
        the caller gives up ``x``, and a large tensor needs no second buffer.
        """
        used = choose_seed(seed, layer.seed)
        config = dropout_config(layer)
        if engine == "onnxruntime":
            result = self.onnx.apply(
                config, x, training=training, seed=used, sample_offset=sample_offset
            )
        else:
            out = x if in_place and x.flags.writeable else None
            result = kernel.apply(
                config, x, training=training, seed=used, sample_offset=sample_offset, out=out
            )
        telemetry.record_tensors(x.nbytes, result.output.nbytes)
        return Applied(result.output, result.mask, used, layer_name(layer), config)

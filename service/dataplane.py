"""The data plane: what every protocol does once HTTP is out of the way.

One ``DataPlane`` per app, opened in its lifespan, owns the layer store (behind a short-lived
cache), the engines that run a layer (the numpy kernel, onnxruntime) and the request limits.
``/apply`` (JSON and ``.npy``) and V2 infer call it; routes only translate HTTP to these calls
and their answers back (MLServer's ``handlers/dataplane.py`` plays the same part there).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
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
    Parameter,
    TensorMetadata,
)
from service.layers.resolve import ResolvedSpec, dropout_config, resolve_body
from service.layers.signature import signature
from service.layers.spec import KerasLayerConfig, Layer, LayerCreate
from service.models.repository import Repository
from service.models.serving import ModelInfo, Runner, RunnerCache
from service.onnx.engine import OnnxEngine
from service.params import DEFAULT_MASK, Engine, MaskForm
from service.settings import Settings
from service.store import LayerStore, open_store
from service.store.base import StoredModel
from service.store.cache import CachingLayerStore
from service.uncertainty import Statistics, answer_plan, sample_statistics

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
    max_model_bytes: int = 512 * 1024 * 1024
    max_mc_samples: int = 256


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


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A model found by name: its digest, and its bytes unless its session is cached."""

    name: str
    sha256: str
    data: bytes | None
    info: dict[str, Any] | None = None
    created_at: str | None = None
    read_only: bool = False

    @classmethod
    def stored(cls, model: StoredModel) -> ModelRef:
        """A model of the store, by its description (its bytes are read when needed)."""
        return cls(model.name, str(model.info["sha256"]), None, model.info, model.created_at)


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
        model_repository: Path | None = None,
        model_cache_bytes: int = 2 * 1024 * 1024 * 1024,
        model_threads: int = 2,
    ) -> None:
        self._layers = CachingLayerStore(store, ttl=layer_cache_seconds)
        self.limits = limits
        self.data_format = data_format
        self.onnx = onnx if onnx is not None else OnnxEngine()
        self.runners = RunnerCache(
            max_bytes=model_cache_bytes,
            max_nodes=limits.max_model_nodes,
            intra_op_threads=model_threads,
        )
        self.repository = (
            None
            if model_repository is None
            else Repository(model_repository, max_bytes=limits.max_model_bytes)
        )

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
                settings.max_body_bytes,
                settings.max_tensor_elements,
                settings.max_model_nodes,
                settings.max_model_bytes,
                settings.max_mc_samples,
            ),
            data_format=settings.data_format,
            layer_cache_seconds=settings.layer_cache_seconds,
            model_repository=Path(settings.model_repository) if settings.model_repository else None,
            model_cache_bytes=settings.model_cache_bytes,
            model_threads=settings.model_threads,
        )

    def close(self) -> None:
        self.runners.clear()
        self.onnx.close()
        self._layers.close()

    @property
    def store(self) -> LayerStore:
        """The layer store (reads of one layer answered from the short memory)."""
        return self._layers

    # -- finding what to run --------------------------------------------------------------

    def cached_layer(self, ref: str) -> Layer | None:
        """The stored layer ``ref`` names when the process's short memory has it, else None."""
        return self._layers.cached(ref)

    async def layer(self, ref: str) -> Layer:
        """The stored layer ``ref`` names (id or name): from the process's short memory when
        it has it, else from the store, in a worker thread (the store blocks)."""
        layer = self.cached_layer(ref)
        if layer is not None:
            return layer
        return await run_in_threadpool(partial(self._layers.get, ref, held_ok=True))

    async def model(self, name: str, version: str | None = None) -> Layer:
        """The stored layer the Open Inference Protocol serves as model ``name`` (at
        ``version``, when the request names one), whose only version is ``MODEL_VERSION``."""
        layer = await self.layer(name)
        if version is not None and version != MODEL_VERSION:
            raise errors.ModelVersionNotFound(name, version)
        return layer

    async def served(self, name: str, version: str | None = None) -> Layer | ModelRef:
        """What V2 serves as ``name``: a layer, else a repository or stored model."""
        if version is not None and version != MODEL_VERSION:
            await self.served(name)  # an unknown name is a 404 of its own
            raise errors.ModelVersionNotFound(name, version)
        try:
            return await self.layer(name)
        except errors.LayerNotFound:
            pass
        except errors.StoreUnavailable:
            if self.repository is not None and self.repository.has(name):
                return await run_in_threadpool(self.model_ref, name)
            held = self._layers.held_model(name)
            if held is None:
                raise
            # The store is away: a model this process served goes on being served.
            return ModelRef.stored(held)
        return await run_in_threadpool(partial(self.model_ref, name, held_ok=True))

    def model_ref(self, name: str, *, held_ok: bool = False) -> ModelRef:
        """Model ``name`` as the store (or the repository) has it now; ModelNotFound. With
        ``held_ok``, as this process last read it while the store does not answer."""
        if self.repository is not None:
            found = self.repository.read(name)
            if found is not None:
                return ModelRef(name, found.sha256, found.data, read_only=True)
        return ModelRef.stored(self._layers.get_model(name, held_ok=held_ok))

    def runner(self, ref: ModelRef) -> Runner:
        """The session of ``ref``'s model: cached by digest, else built from its bytes, read
        in one query with their digest (so a model replaced meanwhile is never mixed up)."""
        cached = self.runners.cached(ref.sha256)
        if cached is not None:
            return cached
        if ref.data is not None:
            return self.runners.get(ref.sha256, ref.data)
        stored = self._layers.get_model(ref.name, with_data=True)
        assert stored.data is not None
        return self.runners.get(str(stored.info["sha256"]), stored.data)

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether model ``name`` answers infer calls (a 404 when there is none)."""
        await self.served(name, version)
        return True

    async def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        """The protocol's metadata of model ``name``: its inputs and outputs."""
        served = await self.served(name, version)
        if isinstance(served, Layer):
            return layer_metadata(served)
        info = await run_in_threadpool(self.model_info, served)
        return ModelMetadata(
            name=name,
            versions=(MODEL_VERSION,),
            platform=PLATFORM,
            inputs=info.inputs,
            outputs=info.outputs,
            parameters={"layers": len(info.layers)},
        )

    # -- the model routes ------------------------------------------------------------------

    def put_model(self, name: str, data: bytes) -> tuple[ModelRef, bool]:
        """Store ``data`` as model ``name`` (True: it is new). It is checked and loaded by
        onnxruntime first, so what is stored always serves; repository names are read-only."""
        if self.repository is not None and self.repository.has(name):
            raise errors.ReadOnlyModel(name)
        sha256 = hashlib.sha256(data).hexdigest()
        info = self.runners.get(sha256, data).info.as_dict()
        stored, created = self._layers.put_model(name, data, info)
        return ModelRef(name, sha256, None, info=info, created_at=stored.created_at), created

    def model_page(self, limit: int, cursor: str | None) -> tuple[list[ModelRef], str | None]:
        """One page of models: the stored ones oldest first, then (after the last stored page)
        the repository's, less the files that are not models."""
        page = self._layers.list_models(limit, cursor)
        refs = [ModelRef.stored(m) for m in page.models]
        if page.next_cursor is None and self.repository is not None:
            for name in self.repository.names():
                try:
                    ref = self.model_ref(name)
                    refs.append(replace(ref, info=self.model_info(ref).as_dict()))
                except errors.ServiceError:  # too large or not a model: GET /models/{name} says
                    continue
        return refs, page.next_cursor

    def described(self, name: str) -> ModelRef:
        """Model ``name`` with its description (``info``) filled in."""
        ref = self.model_ref(name)
        return replace(ref, info=self.model_info(ref).as_dict())

    def model_bytes(self, name: str) -> bytes:
        """The bytes of model ``name``, as stored (or as its repository file holds them)."""
        if self.repository is not None:
            found = self.repository.read(name)
            if found is not None:
                return found.data
        stored = self._layers.get_model(name, with_data=True)
        assert stored.data is not None
        return stored.data

    def delete_model(self, name: str) -> None:
        if self.repository is not None and self.repository.has(name):
            raise errors.ReadOnlyModel(name)
        self._layers.delete_model(name)

    def model_info(self, ref: ModelRef) -> ModelInfo:
        if ref.info is not None:
            return ModelInfo.from_dict(ref.info)
        return self.runner(ref).info

    async def infer(self, name: str, version: str | None, request: InferRequest) -> InferResult:
        """Run model ``name`` on ``request``: in a worker thread for a large request."""
        served = await self.served(name, version)
        if isinstance(served, Layer):
            return await self.run(request.nbytes, self.infer_layer, served, request)
        return await run_in_threadpool(self.infer_model, served, request)

    def infer_model(self, ref: ModelRef, request: InferRequest) -> InferResult:
        """A stored ONNX model: in inference mode, a training call, T Monte Carlo samples, or
        their statistics."""
        params = request.parameters
        samples = params.mc_samples
        stats = params.statistics()
        if samples is not None and samples > self.limits.max_mc_samples:
            raise errors.TooManyMcSamples(samples, self.limits.max_mc_samples)
        if stats is not None and samples is None:
            raise errors.InvalidInferRequest("mc_statistics needs mc_samples.")
        runner = self.runner(ref)
        training = params.training or samples is not None
        if training and runner.layer_count == 0:
            raise errors.NotComposed(
                ref.name, "training and mc_samples draw the inserted layers' masks"
            )
        seed = choose_seed(params.seed, runner.default_seed()) if training else 0
        answered: dict[str, Parameter] = {"training": training}
        if training:
            answered["seed"] = seed
        if samples is not None:
            answered["mc_samples"] = samples
        if stats is not None and samples is not None:
            outputs, used = self._sample_statistics(runner, request, stats, seed, samples)
            answered["mc_samples_used"] = used
        else:
            produced = runner.run(
                request.inputs,
                training=training,
                seed=seed,
                sample_offset=params.sample_offset,
                samples=samples,
                max_elements=self.limits.max_tensor_elements,
            )
            wanted = request.outputs or tuple(produced)
            unknown = [out for out in wanted if out not in produced]
            if unknown:
                raise errors.InvalidInferRequest(
                    f"Unknown output {unknown[0]!r}; model {ref.name!r} answers "
                    f"{', '.join(produced)}."
                )
            outputs = {out: produced[out] for out in wanted}
        return InferResult(
            model_name=ref.name,
            model_version=MODEL_VERSION,
            request_id=request.request_id,
            parameters=answered,
            outputs=outputs,
        )

    def _sample_statistics(
        self, runner: Runner, request: InferRequest, stats: Statistics, seed: int, ceiling: int
    ) -> tuple[dict[str, NDArray[Any]], int]:
        """The statistics a request asks of a model's outputs, and the samples they took."""
        plan = answer_plan([o.name for o in runner.info.outputs], request.outputs, stats.names)
        wanted: dict[str, tuple[str, ...]] = {}
        for out, name in plan.values():
            wanted[out] = (*wanted.get(out, ()), name)
        feeds = runner.feeds(request.inputs)
        held = ceiling if "quantiles" in stats.names else 1
        runner.check_size(feeds, max(held, len(stats.quantiles)), self.limits.max_tensor_elements)
        names = tuple(wanted)

        def draw(first: int, count: int) -> dict[str, NDArray[Any]]:
            return runner.samples(
                feeds,
                seed=seed,
                sample_offset=request.parameters.sample_offset,
                first=first,
                count=count,
                outputs=names,
            )

        sampled = sample_statistics(draw, wanted, stats, ceiling=ceiling)
        outputs = {key: sampled.statistics[out][name] for key, (out, name) in plan.items()}
        return outputs, sampled.samples_used

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
        if params.mc_samples is not None or params.statistics() is not None:
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
        self,
        ref: str,
        model: bytes,
        *,
        after: Sequence[str],
        seed: int | None,
        mask: MaskForm = DEFAULT_MASK,
    ) -> tuple[bytes, int]:
        """The stored layer ``ref`` inserted into ``model`` after each tensor of ``after``, and
        the seed used (the request's, else the layer's, else drawn); the work runs in a thread."""
        layer = await self.layer(ref)
        used = choose_seed(seed, layer.seed)
        composed = await run_in_threadpool(
            compose,
            model,
            layer,
            after=after,
            seed=used,
            max_nodes=self.limits.max_model_nodes,
            mask=mask,
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

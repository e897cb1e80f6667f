"""The two transports: ``Client`` (httpx.Client) and ``AsyncClient`` (httpx.AsyncClient).

Each public method builds its ``Call`` in service.client._calls and sends it; the only code
the two classes do not share is the send loop, which differs by ``await``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
from numpy.typing import NDArray

from service import __version__
from service.client import _calls
from service.client._calls import (
    Applied,
    Composed,
    Engine,
    Inferred,
    Layer,
    LayerPage,
    Mask,
    ModelInfo,
    ModelPage,
    Stored,
)
from service.client._core import Call, RetryPolicy, next_cursor, transport_error
from service.client.errors import ClientError

T = TypeVar("T")

#: A listing call of one page: (page size, cursor) -> the call (``_calls.list_layers``).
Listing = Callable[[int | None, str | None], Call[Any]]

DEFAULT_TIMEOUT = 30.0


def _headers(token: str | None) -> dict[str, str]:
    headers = {"user-agent": f"spatial-dropout-client/{__version__}"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return headers


def _request(http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
    return http.build_request(
        call.method,
        call.path,
        params=tuple(call.params),
        headers=call.headers,
        content=call.content,
    )


def _wait_or_raise(
    policy: RetryPolicy, attempt: int, call: Call[Any], exc: httpx.TransportError | ClientError
) -> float:
    """The seconds to wait before resending ``call`` after attempt ``attempt`` failed with
    ``exc``; raises the client's error when the policy gives up."""
    error = transport_error(exc) if isinstance(exc, httpx.TransportError) else exc
    wait = policy.delay(attempt, error, call.repeatable)
    if wait is None:
        if error is exc:
            raise error
        raise error from exc
    if policy.on_retry is not None:
        policy.on_retry(attempt, error)
    return wait


class Client:
    """A synchronous client of a spatial-dropout server.

    ``Client("http://127.0.0.1:8000")``, ideally as ``with Client(...) as sd:``. ``token`` is
    sent as a bearer token; ``timeout`` (seconds, or an httpx.Timeout) bounds each attempt;
    ``retry`` says when a failed call is sent again. ``http`` lends an httpx.Client of your
    own (its base_url is used; the client does not close it).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        token: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._owned = http is None
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self._http.headers.update(_headers(token))

    def close(self) -> None:
        """Close the connections (a lent httpx.Client stays open)."""
        if self._owned:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def send(self, call: Call[T]) -> T:
        """Send ``call``, retried as ``self.retry`` says, and parse its answer."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return call.parse(self._http.send(_request(self._http, call)))
            except (httpx.TransportError, ClientError) as exc:
                wait = _wait_or_raise(self.retry, attempt, call, exc)
            time.sleep(wait)

    # -- layers ----------------------------------------------------------------------------

    def create_layer(self, spec: Mapping[str, Any]) -> Layer:
        """Store a layer from a spec (``{"kind", "rate", "name", "seed", ...}``) or a Keras
        config (``{"class_name": "SpatialDropout2D", "config": {...}}``); the stored layer.
        Sent once unless the connection never opened: a resend could store it twice."""
        return self.send(_calls.create_layer(spec))

    def get_layer(self, ref: str) -> Layer:
        """The layer with this id or name (LayerNotFound if none)."""
        return self.send(_calls.get_layer(ref))

    def list_layers(self, *, limit: int | None = None, cursor: str | None = None) -> LayerPage:
        """One page of layers, oldest first; pass ``next_cursor`` as ``cursor`` for the next."""
        return self.send(_calls.list_layers(limit, cursor))

    def iter_layers(self, *, page_size: int | None = None) -> Iterator[Layer]:
        """Every layer, oldest first, a page at a time."""
        return self._walk(_calls.list_layers, page_size)

    def _walk(self, listing: Listing, page_size: int | None) -> Iterator[Any]:
        cursor: str | None = None
        while True:
            page = self.send(listing(page_size, cursor))
            yield from page["items"]
            cursor = next_cursor(page, cursor)
            if cursor is None:
                return

    def delete_layer(self, ref: str) -> None:
        """Delete the layer with this id or name (LayerNotFound if none)."""
        self.send(_calls.delete_layer(ref))

    def keras(self, ref: str) -> dict[str, Any]:
        """The layer's Keras 3 serialized form (``keras.layers.deserialize`` takes it)."""
        return self.send(_calls.keras(ref))

    def export_onnx(
        self,
        ref: str,
        *,
        opset: int | None = None,
        seed: int | None = None,
        dtype: str | None = None,
        rank: int | None = None,
        mask: Mask | None = None,
    ) -> bytes:
        """The layer as an ONNX model's bytes (``GET /layers/{ref}/onnx``); ``mask="portable"``
        computes the mask in the graph, exact on any ONNX runtime."""
        return self.send(_calls.export_onnx(ref, opset, seed, dtype, rank, mask))

    # -- apply and compose -----------------------------------------------------------------

    def apply(
        self,
        layer: str,
        x: NDArray[Any],
        *,
        training: bool = False,
        seed: int | None = None,
        sample_offset: int = 0,
        engine: Engine = "numpy",
        return_mask: bool = False,
    ) -> Applied:
        """Run a stored layer on ``x`` (.npy both ways; with ``return_mask``, the JSON form,
        exact too for finite values). The answer holds the output and the seed used."""
        return self.send(
            _calls.apply(
                layer,
                x,
                training=training,
                seed=seed,
                sample_offset=sample_offset,
                engine=engine,
                return_mask=return_mask,
            )
        )

    def compose(
        self,
        layer: str,
        model: bytes,
        *,
        after: Sequence[str] = (),
        seed: int | None = None,
        mask: Mask | None = None,
    ) -> Composed:
        """Insert the layer into an ONNX model after each ``after`` tensor (none: after its
        only output); the composed model's bytes and the seed of insertion 0. ``mask``:
        ``"portable"`` computes each mask in the graph (the server's default: ``"dropout"``)."""
        return self.send(_calls.compose(layer, model, after, seed, mask))

    # -- models ----------------------------------------------------------------------------

    def put_model(self, name: str, model: bytes) -> Stored:
        """Store an ONNX model under ``name``, replacing the one of that name."""
        return self.send(_calls.put_model(name, model))

    def get_model(self, name: str) -> ModelInfo:
        """A stored model's description (ModelNotFound if none)."""
        return self.send(_calls.get_model(name))

    def list_models(self, *, limit: int | None = None, cursor: str | None = None) -> ModelPage:
        """One page of models; pass ``next_cursor`` as ``cursor`` for the next."""
        return self.send(_calls.list_models(limit, cursor))

    def iter_models(self, *, page_size: int | None = None) -> Iterator[ModelInfo]:
        """Every model, a page at a time."""
        return self._walk(_calls.list_models, page_size)

    def delete_model(self, name: str) -> None:
        """Delete a stored model (ModelNotFound if none)."""
        self.send(_calls.delete_model(name))

    def model_onnx(self, name: str) -> bytes:
        """A model's stored bytes."""
        return self.send(_calls.model_onnx(name))

    def infer(
        self,
        model: str,
        inputs: Mapping[str, NDArray[Any]],
        *,
        training: bool | None = None,
        seed: int | None = None,
        sample_offset: int | None = None,
        mc_samples: int | None = None,
        mc_statistics: bool | str | Sequence[str] = False,
        mc_class_axis: int | None = None,
        mc_softmax: bool | None = None,
        mc_quantiles: Sequence[float] | None = None,
        mc_tolerance: float | None = None,
        engine: Engine | None = None,
        outputs: Sequence[str] | None = None,
    ) -> Inferred:
        """Run a model (or a layer) over ``/v2``, tensors in the binary extension.

        ``mc_samples=T``: Monte Carlo dropout, every output gaining a leading axis of T
        (sample t is the training call with seed + t*K). ``mc_statistics`` answers statistics
        of the samples instead: True for OUT_mean and OUT_variance, or names (``["mean",
        "mutual_information"]``), each as OUT_<name>; ``mc_softmax``, ``mc_class_axis`` and
        ``mc_quantiles`` shape them, and ``mc_tolerance`` stops sampling once every standard
        error of the mean is within it (``Inferred.samples_used`` says when). ``outputs``
        picks outputs by name (default: all)."""
        return self.send(
            _calls.infer(
                model,
                inputs,
                training=training,
                seed=seed,
                sample_offset=sample_offset,
                mc_samples=mc_samples,
                mc_statistics=mc_statistics,
                mc_class_axis=mc_class_axis,
                mc_softmax=mc_softmax,
                mc_quantiles=mc_quantiles,
                mc_tolerance=mc_tolerance,
                engine=engine,
                outputs=outputs,
            )
        )


class AsyncClient:
    """The asynchronous client: ``Client``'s methods, awaited (``async with AsyncClient(...)``)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        token: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._owned = http is None
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._http.headers.update(_headers(token))

    async def aclose(self) -> None:
        """Close the connections (a lent httpx.AsyncClient stays open)."""
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send ``call``, retried as ``self.retry`` says, and parse its answer."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return call.parse(await self._http.send(_request(self._http, call)))
            except (httpx.TransportError, ClientError) as exc:
                wait = _wait_or_raise(self.retry, attempt, call, exc)
            await asyncio.sleep(wait)

    async def create_layer(self, spec: Mapping[str, Any]) -> Layer:
        """See ``Client.create_layer``."""
        return await self.send(_calls.create_layer(spec))

    async def get_layer(self, ref: str) -> Layer:
        """See ``Client.get_layer``."""
        return await self.send(_calls.get_layer(ref))

    async def list_layers(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> LayerPage:
        """See ``Client.list_layers``."""
        return await self.send(_calls.list_layers(limit, cursor))

    def iter_layers(self, *, page_size: int | None = None) -> AsyncIterator[Layer]:
        """See ``Client.iter_layers``."""
        return self._walk(_calls.list_layers, page_size)

    async def _walk(self, listing: Listing, page_size: int | None) -> AsyncIterator[Any]:
        cursor: str | None = None
        while True:
            page = await self.send(listing(page_size, cursor))
            for item in page["items"]:
                yield item
            cursor = next_cursor(page, cursor)
            if cursor is None:
                return

    async def delete_layer(self, ref: str) -> None:
        """See ``Client.delete_layer``."""
        await self.send(_calls.delete_layer(ref))

    async def keras(self, ref: str) -> dict[str, Any]:
        """See ``Client.keras``."""
        return await self.send(_calls.keras(ref))

    async def export_onnx(
        self,
        ref: str,
        *,
        opset: int | None = None,
        seed: int | None = None,
        dtype: str | None = None,
        rank: int | None = None,
        mask: Mask | None = None,
    ) -> bytes:
        """See ``Client.export_onnx``."""
        return await self.send(_calls.export_onnx(ref, opset, seed, dtype, rank, mask))

    async def apply(
        self,
        layer: str,
        x: NDArray[Any],
        *,
        training: bool = False,
        seed: int | None = None,
        sample_offset: int = 0,
        engine: Engine = "numpy",
        return_mask: bool = False,
    ) -> Applied:
        """See ``Client.apply``."""
        return await self.send(
            _calls.apply(
                layer,
                x,
                training=training,
                seed=seed,
                sample_offset=sample_offset,
                engine=engine,
                return_mask=return_mask,
            )
        )

    async def compose(
        self,
        layer: str,
        model: bytes,
        *,
        after: Sequence[str] = (),
        seed: int | None = None,
        mask: Mask | None = None,
    ) -> Composed:
        """See ``Client.compose``."""
        return await self.send(_calls.compose(layer, model, after, seed, mask))

    async def put_model(self, name: str, model: bytes) -> Stored:
        """See ``Client.put_model``."""
        return await self.send(_calls.put_model(name, model))

    async def get_model(self, name: str) -> ModelInfo:
        """See ``Client.get_model``."""
        return await self.send(_calls.get_model(name))

    async def list_models(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> ModelPage:
        """See ``Client.list_models``."""
        return await self.send(_calls.list_models(limit, cursor))

    def iter_models(self, *, page_size: int | None = None) -> AsyncIterator[ModelInfo]:
        """See ``Client.iter_models``."""
        return self._walk(_calls.list_models, page_size)

    async def delete_model(self, name: str) -> None:
        """See ``Client.delete_model``."""
        await self.send(_calls.delete_model(name))

    async def model_onnx(self, name: str) -> bytes:
        """See ``Client.model_onnx``."""
        return await self.send(_calls.model_onnx(name))

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, NDArray[Any]],
        *,
        training: bool | None = None,
        seed: int | None = None,
        sample_offset: int | None = None,
        mc_samples: int | None = None,
        mc_statistics: bool | str | Sequence[str] = False,
        mc_class_axis: int | None = None,
        mc_softmax: bool | None = None,
        mc_quantiles: Sequence[float] | None = None,
        mc_tolerance: float | None = None,
        engine: Engine | None = None,
        outputs: Sequence[str] | None = None,
    ) -> Inferred:
        """See ``Client.infer``."""
        return await self.send(
            _calls.infer(
                model,
                inputs,
                training=training,
                seed=seed,
                sample_offset=sample_offset,
                mc_samples=mc_samples,
                mc_statistics=mc_statistics,
                mc_class_axis=mc_class_axis,
                mc_softmax=mc_softmax,
                mc_quantiles=mc_quantiles,
                mc_tolerance=mc_tolerance,
                engine=engine,
                outputs=outputs,
            )
        )

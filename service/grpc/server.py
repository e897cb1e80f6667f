"""The gRPC server: ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health`` on a
``grpc.aio`` server that runs on the HTTP server's event loop, beside it in each process.

Handlers take and return the wire bytes themselves (no grpcio (de)serializer), so that a
tensor is cut out of the request without a copy (service.grpc.codec) and a malformed message
is the client's INVALID_ARGUMENT, not grpcio's generic failure. Every call passes one wrapper
(``_Rpc``) that checks the bearer token, counts the call in the metrics, writes its access
log line, and maps a ServiceError to its status (service.grpc.status) with the REST message.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2
from starlette.concurrency import run_in_threadpool

from service import __version__, telemetry
from service.api import logs
from service.api.auth import TokenCheck
from service.api.metrics import Metrics
from service.dataplane import DataPlane
from service.drain import Drain
from service.errors import ServiceError
from service.grpc import codec
from service.grpc.proto import inference_pb2 as pb
from service.grpc.status import ERROR_CODE_KEY, status_code
from service.inference import PLATFORM
from service.settings import Settings

SERVICE: Final = "inference.GRPCInferenceService"
HEALTH_SERVICE: Final = "grpc.health.v1.Health"
EXTENSIONS: Final = ("binary_tensor_data",)
#: HTTP/2 streams one client connection may have open at once (grpcio's default: no limit).
MAX_STREAMS_PER_CONNECTION: Final = 100

access_log = logging.getLogger(logs.ACCESS_LOGGER)
log = logging.getLogger(__name__)

Handler = Callable[[bytes], Awaitable[bytes]]


class Access(enum.Enum):
    """Who may call: as over HTTP, probes are open, reads need a token only with AUTH_READS."""

    OPEN = "open"
    READ = "read"
    WRITE = "write"


class _Rpc:
    """One method's handler, wrapped in auth, telemetry and the error mapping."""

    def __init__(self, service: Services, name: str, access: Access, handler: Handler) -> None:
        self.service = service
        self.name = name
        self.access = access
        self.handler = handler

    async def handle(self, data: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """The call; a bound coroutine function, which grpc.aio recognises as one (an object
        with an async ``__call__`` it would take for a synchronous handler)."""
        start = time.perf_counter()
        metadata = _metadata(context)
        request_id = _request_id(metadata)
        record = telemetry.RequestContext(request_id)
        token = telemetry.begin(record)
        code = grpc.StatusCode.OK
        try:
            self.service.authorize(self.access, metadata)
            return await self.handler(data)
        except ServiceError as exc:
            code = status_code(exc)
            context.set_trailing_metadata(((ERROR_CODE_KEY, exc.code),))
            await context.abort(code, exc.detail)
            raise  # abort raises; this line only tells the type checker
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("gRPC %s failed", self.name)
            await context.abort(code, "Internal server error")
            raise
        finally:
            seconds = time.perf_counter() - start
            self.service.metrics.observe_grpc(
                self.name, code.name, seconds, record.tensor_bytes_in, record.tensor_bytes_out
            )
            if access_log.isEnabledFor(logging.INFO):
                _log_access(self.name, code, seconds)
            telemetry.end(token)


class Services:
    """The handlers of both services, over one data plane."""

    def __init__(
        self, plane: DataPlane, metrics: Metrics, settings: Settings, drain: Drain | None = None
    ) -> None:
        self.plane = plane
        self.drain = drain
        self.metrics = metrics
        tokens = settings.tokens()
        self._tokens = TokenCheck(tokens) if tokens else None
        self._reads = settings.auth_reads

    def authorize(self, access: Access, metadata: dict[str, str | bytes]) -> None:
        if self._tokens is None or access is Access.OPEN:
            return
        if access is Access.READ and not self._reads:
            return
        header = metadata.get("authorization")
        value = header.encode("latin-1") if isinstance(header, str) else header
        failure = self._tokens.check(value)
        if failure is not None:
            raise failure[0]

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        inference = {
            "ServerLive": (Access.OPEN, self.server_live),
            "ServerReady": (Access.OPEN, self.server_ready),
            "ModelReady": (Access.READ, self.model_ready),
            "ServerMetadata": (Access.READ, self.server_metadata),
            "ModelMetadata": (Access.READ, self.model_metadata),
            "ModelInfer": (Access.WRITE, self.model_infer),
        }
        health = {"Check": (Access.OPEN, self.health_check)}
        return (self._generic(SERVICE, inference), self._generic(HEALTH_SERVICE, health))

    def _generic(
        self, service: str, methods: Mapping[str, tuple[Access, Handler]]
    ) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            service,
            {
                name: grpc.unary_unary_rpc_method_handler(_Rpc(self, name, access, handler).handle)
                for name, (access, handler) in methods.items()
            },
        )

    # -- the methods ----------------------------------------------------------------------

    async def server_live(self, data: bytes) -> bytes:
        codec.parse(pb.ServerLiveRequest, data)
        return _bytes(pb.ServerLiveResponse(live=True))

    async def _store_answers(self) -> bool:
        """Whether this replica takes new calls: not stopping, and its store answers."""
        if self.drain is not None and self.drain.draining:
            return False
        try:
            await run_in_threadpool(self.plane.store.ping)
        except ServiceError:
            return False
        return True

    async def server_ready(self, data: bytes) -> bytes:
        codec.parse(pb.ServerReadyRequest, data)
        return _bytes(pb.ServerReadyResponse(ready=await self._store_answers()))

    async def health_check(self, data: bytes) -> bytes:
        request = codec.parse(health_pb2.HealthCheckRequest, data)
        if request.service not in ("", SERVICE):
            status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        elif await self._store_answers():
            status = health_pb2.HealthCheckResponse.SERVING
        else:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        return _bytes(health_pb2.HealthCheckResponse(status=status))

    async def server_metadata(self, data: bytes) -> bytes:
        codec.parse(pb.ServerMetadataRequest, data)
        answer = pb.ServerMetadataResponse(
            name=PLATFORM, version=__version__, extensions=EXTENSIONS
        )
        return _bytes(answer)

    async def model_ready(self, data: bytes) -> bytes:
        request = codec.parse(pb.ModelReadyRequest, data)
        ready = await self.plane.model_ready(request.name, request.version or None)
        return _bytes(pb.ModelReadyResponse(ready=ready))

    async def model_metadata(self, data: bytes) -> bytes:
        request = codec.parse(pb.ModelMetadataRequest, data)
        meta = await self.plane.model_metadata(request.name, request.version or None)
        answer = pb.ModelMetadataResponse(
            name=meta.name, versions=meta.versions, platform=meta.platform
        )
        for tensors, into in ((meta.inputs, answer.inputs), (meta.outputs, answer.outputs)):
            for tensor in tensors:
                into.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        return _bytes(answer)

    async def model_infer(self, data: bytes) -> bytes:
        """As REST's infer: an unknown model first, then the request decoded, run by the
        data plane and encoded; large ones off the event loop."""
        request, raws = codec.read_infer(data)
        name, version = request.model_name, request.model_version or None
        await self.plane.model_ready(name, version)
        limit = self.plane.limits.max_tensor_elements
        decoded = await self.plane.run(
            len(data), partial(codec.decode_infer, max_elements=limit), request, raws
        )
        result = await self.plane.infer(name, version, decoded)
        return await self.plane.run(result.nbytes, codec.encode_infer, result)


def _bytes(message: Any) -> bytes:
    """A message serialized (protobuf's Python API is untyped)."""
    data: bytes = message.SerializeToString()
    return data


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str | bytes]:
    return dict(context.invocation_metadata() or ())


def _request_id(metadata: dict[str, str | bytes]) -> str:
    given = metadata.get("x-request-id")
    if isinstance(given, str) and given.isascii() and 0 < len(given) <= 128:
        return given
    return os.urandom(16).hex()


def _log_access(method: str, code: grpc.StatusCode, seconds: float) -> None:
    duration_ms = round(seconds * 1000, 3)
    fields = {"protocol": "grpc", "method": method, "status": code.name, "duration_ms": duration_ms}
    logs.info_line(access_log, f"GRPC {method} {code.name} {duration_ms:.1f}ms", fields)


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """grpcio channel arguments: messages bounded as HTTP bodies are, and streams per
    connection too (each may hold a flow-control window of unread data); the port shared by
    the worker processes only when there are several (alone, a port in use is an error)."""
    return [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),
        ("grpc.max_concurrent_streams", MAX_STREAMS_PER_CONNECTION),
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    ]


async def start_server(
    plane: DataPlane, metrics: Metrics, settings: Settings, drain: Drain | None = None
) -> grpc.aio.Server:
    """A started gRPC server on ``settings.host``:``settings.grpc_port``; while ``drain``
    says so, its health check answers NOT_SERVING."""
    server = grpc.aio.server(options=server_options(settings))
    server.add_generic_rpc_handlers(Services(plane, metrics, settings, drain).handlers())
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.grpc_port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"gRPC cannot listen on {address}")
    await server.start()
    return server

"""Every request gets an id (``X-Request-ID``), one access log line and its metrics.

Pure ASGI, so bodies stream through untouched (Starlette's BaseHTTPMiddleware would buffer
them), and it costs a few microseconds a request. It wraps the whole app, outside Starlette's
error middleware, so even a 500 carries the id and the error's log line names it.
"""

from __future__ import annotations

import logging
import re
import time
from random import getrandbits
from typing import Final

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import telemetry
from service.api import logs
from service.api.metrics import Metrics

HEADER: Final = b"x-request-id"
#: An incoming id is kept when it is short and plain (UUIDs, hex, base64, dotted or dashed
#: trace ids); anything else is replaced, so logs and headers never carry what a client forged.
_SANE_ID: Final = re.compile(rb"[A-Za-z0-9][A-Za-z0-9._:+/=-]{0,127}")
#: The route label of a request that no route matched (its raw path would blow up the labels).
UNMATCHED: Final = "unmatched"

access_log = logging.getLogger(logs.ACCESS_LOGGER)


class RequestTelemetry:
    def __init__(self, app: ASGIApp, metrics: Metrics | None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = request_id_of(scope["headers"])
        id_header = (HEADER, request_id.encode("ascii"))
        context = telemetry.RequestContext(request_id)
        token = telemetry.begin(context)
        status = 500  # what the client gets if the app fails before it answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        metrics = self.metrics
        if metrics is not None:
            metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if metrics is not None:
                metrics.in_progress.dec()
            method, path = scope["method"], scope["path"]
            seconds = time.perf_counter() - start
            account(metrics, method, path, _route_template(scope), status, seconds, context)
            telemetry.end(token)


class ServiceApp(FastAPI):
    """FastAPI with ``RequestTelemetry`` outermost (``app.state.metrics``, when set, is fed)."""

    def build_middleware_stack(self) -> ASGIApp:
        return RequestTelemetry(
            super().build_middleware_stack(), getattr(self.state, "metrics", None)
        )


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The request's own id when it sent a sane one, else a new random one.

    An id correlates lines; it guards nothing, so it needs no cryptographic randomness, and
    os.urandom would be a system call per request.
    """
    return _incoming_id(headers) or f"{getrandbits(128):032x}"


def account(
    metrics: Metrics | None,
    method: str,
    path: str,
    route: str,
    status: int,
    seconds: float,
    context: telemetry.RequestContext,
) -> None:
    """A finished request's metrics and its access log line (in its telemetry context)."""
    if metrics is not None:
        metrics.observe(
            method, route, status, seconds, context.tensor_bytes_in, context.tensor_bytes_out
        )
    if access_log.isEnabledFor(logging.INFO):
        _log_access(method, path, route, status, seconds)


def _incoming_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    for key, value in headers:
        if key == HEADER:
            return value.decode("ascii") if _SANE_ID.fullmatch(value) else None
    return None


def _route_template(scope: Scope) -> str:
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


def _log_access(method: str, path: str, route: str, status: int, seconds: float) -> None:
    duration_ms = round(seconds * 1000, 3)
    fields = {
        "method": method,
        "path": path,
        "route": route,
        "status": status,
        "duration_ms": duration_ms,
    }
    logs.info_line(access_log, f"{method} {path} {status} {duration_ms:.1f}ms", fields)

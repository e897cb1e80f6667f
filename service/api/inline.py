"""Small requests to the hot routes, answered in the HTTP protocol before any ASGI task exists.

For each request uvicorn starts a task and the request passes down the ASGI layers, message
by message. For a small tensor that costs more than the answer does. So when the head and the
whole body of a request come in one read, and its connection has nothing else in flight, the
protocol (``service.api.heads``) first offers the request to the route's ``inline`` handler.
The handler answers at once, or it declines before it has touched anything. It declines when
the layer is not in memory, when the body is in another form, or when a bearer token must be
checked. A declined request goes the ordinary ASGI way, as if it had never been offered.

An answer from here is the app's answer. The handler is the route's own code. Failures are
answered by the app's error handlers, and each request gets its id, metrics and access line
from the same functions that ``RequestTelemetry`` calls.

One served app per process: its lifespan installs it here (``spatial-dropout serve`` runs one
app in each worker process).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import ValidationError
from starlette.responses import Response

from service import telemetry
from service.api import problems
from service.api.observe import HEADER, account, request_id_of
from service.dataplane import INLINE_BYTES
from service.errors import ServiceError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.api.metrics import Metrics
    from service.dataplane import DataPlane


@dataclass(slots=True)
class InlineRequest:
    method: str
    path: str
    query_string: bytes
    headers: list[tuple[bytes, bytes]]  # names in lower case, as uvicorn gives them
    body: bytearray  # the request's own: a handler may answer in it
    path_params: dict[str, str] = field(default_factory=dict)

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None


#: A route's inline handler: its answer, or None to decline (nothing touched yet).
Handler = Callable[["DataPlane", InlineRequest], Response | None]


@dataclass(frozen=True, slots=True)
class Route:
    """A route's inline handler, and what it is matched by."""

    method: str
    template: str  # the path template, the route's label in metrics and logs
    pattern: re.Pattern[str]  # the route's own path regex
    handler: Handler


@dataclass(frozen=True, slots=True)
class _Installed:
    plane: DataPlane
    metrics: Metrics
    routes: tuple[Route, ...]
    max_body: int


_installed: _Installed | None = None


def install(app: FastAPI, routes: list[Route]) -> None:
    """Serve these routes inline for ``app``, while its lifespan runs."""
    global _installed
    settings = app.state.settings
    if settings.tokens():
        return  # every request needs its token checked: the ordinary way does that
    _installed = _Installed(
        app.state.plane,
        app.state.metrics,
        tuple(routes),
        min(INLINE_BYTES, settings.max_body_bytes),
    )


def uninstall() -> None:
    global _installed
    _installed = None


def takes(method: str, path: str, length: int) -> tuple[Route, dict[str, str]] | None:
    """The route that may be offered a request with this method, path and Content-Length,
    and the path's parameters."""
    installed = _installed
    if installed is None or length > installed.max_body:
        return None
    for route in installed.routes:
        matched = route.pattern.match(path) if route.method == method else None
        if matched is not None:
            return route, matched.groupdict()
    return None


def answer(route: Route, request: InlineRequest) -> Response | None:
    """The response to ``request`` (its id header included), or None when ``route`` declines."""
    installed = _installed
    if installed is None:
        return None
    start = time.perf_counter()
    context = telemetry.RequestContext(request_id_of(request.headers))
    token = telemetry.begin(context)
    try:
        try:
            response = route.handler(installed.plane, request)
        except ServiceError as exc:
            response = problems.service_error_response(request.path, exc)
        except ValidationError as exc:
            response = problems.validation_response(request.path, exc)
        except Exception as exc:
            response = problems.internal_error_response(exc)
        if response is None:
            return None
        response.raw_headers.append((HEADER, context.request_id.encode()))
        seconds = time.perf_counter() - start
        account(
            installed.metrics,
            request.method,
            request.path,
            route.template,
            response.status_code,
            seconds,
            context,
        )
        return response
    finally:
        telemetry.end(token)

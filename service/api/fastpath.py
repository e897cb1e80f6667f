"""Plain Starlette routes for the hot endpoints, matched before FastAPI's.

POST /apply and the V2 infer routes are documented by their FastAPI routes (parameters,
bodies, examples, all in openapi.yaml) but served by these: FastAPI's per-request parameter
and dependency machinery costs more than a small tensor's whole dropout. The endpoints are
the same functions, so behaviour cannot drift between the two.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.api.routes import apply, v2

Endpoint = Callable[[Request], Awaitable[Response]]


class FastRoute(Route):
    """A Route that records itself in the scope, as FastAPI's routes do, so that metrics and
    logs label requests by the route's template rather than "unmatched"."""

    def __init__(self, path: str, endpoint: Endpoint) -> None:
        super().__init__(path, endpoint, methods=["POST"], include_in_schema=False)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self
        await super().handle(scope, receive, send)


def fast_routes() -> list[Route]:
    return [
        FastRoute("/apply", apply.apply),
        FastRoute("/v2/models/{name}/infer", v2.infer_endpoint),
        FastRoute("/v2/models/{name}/versions/{version}/infer", v2.infer_endpoint),
    ]

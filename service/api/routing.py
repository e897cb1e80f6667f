"""Routes that serve a plain ``Request -> Response`` endpoint and document themselves.

FastAPI's per-request parameter and dependency solving costs more than a small tensor's whole
dropout, so the hot endpoints read their request themselves (validating with the same pydantic
models and parameter types that this route states in the document). A ``RawRoute`` is still an
``APIRoute``: it is registered once, matched, labelled in metrics and logs by its template, and
its OpenAPI operation (parameters, request body, responses, examples) is declared on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, request_response
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from service.api.inline import Handler

Endpoint = Callable[[Request], Awaitable[Response]]


class RawRoute(APIRoute):
    """One endpoint, served as written and documented by the arguments given here."""

    def __init__(
        self,
        path: str,
        endpoint: Endpoint,
        *,
        methods: Sequence[str],
        summary: str,
        tags: Sequence[str],
        responses: dict[int | str, dict[str, Any]],
        parameters: Sequence[dict[str, Any]] = (),
        request_body: dict[str, Any] | None = None,
        description: str | None = None,
        inline: Handler | None = None,
    ) -> None:
        extra: dict[str, Any] = {"parameters": list(parameters)}
        if request_body is not None:
            extra["requestBody"] = request_body
        super().__init__(
            path,
            endpoint,
            methods=list(methods),
            summary=summary,
            description=description,
            tags=list(tags),
            responses=responses,
            openapi_extra=extra,
            response_class=Response,
        )
        #: What answers this route's small requests in the protocol (service.api.inline).
        self.inline = inline
        # Starlette's wrapper, not FastAPI's: FastAPI's opens two exit stacks per request for
        # dependencies with ``yield``, and a raw endpoint has no dependencies.
        self.app = request_response(self.get_route_handler())

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return handler


class HotRoutes:
    """Routes of the app's table served in front of the router, straight to their endpoint.

    Each is still the router's route: the document, the 405 of a wrong method and every
    other path come from there. Here it is found by the same ``matches`` and its endpoint is
    called with no layer between: the exception middleware, the exit stack, the scan of the
    route list and two exception wrappers cost a small tensor more than its whole dropout.
    A failure is answered by the app's own handler for it, so the answer is the router's to
    the byte; one without a handler goes on up, to the 500 handler and the error log.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[RawRoute]) -> None:
        self.app = app
        self.routes = tuple(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    await _serve(route, scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def _serve(route: RawRoute, scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive, send)
    try:
        response = await route.endpoint(request)
    except Exception as exc:
        handler = _handler_for(scope["app"].exception_handlers, exc)
        if handler is None:
            raise
        response = await handler(request, exc)
    await response(scope, receive, send)


def _handler_for(handlers: dict[Any, Any], exc: Exception) -> Any:
    """The handler Starlette's exception middleware would pick: the nearest class of ``exc``
    that has one; never the catch-all, which belongs to the outermost error middleware."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None


def path_parameter(name: str, description: str) -> dict[str, Any]:
    """An OpenAPI path parameter (a string)."""
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI ``parameters`` (all optional, in the query) for the fields of ``model``, whose
    validation (``model_validate_strings``) is what the endpoint runs on the query string."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return [
        {
            "name": name,
            "in": "query",
            "required": False,
            "schema": {k: v for k, v in prop.items() if k != "description"},
            "description": prop.get("description", ""),
        }
        for name, prop in schema["properties"].items()
    ]

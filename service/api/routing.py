"""Routes that serve a plain ``Request -> Response`` endpoint and document themselves.

FastAPI's per-request parameter and dependency solving costs more than a small tensor's whole
dropout, so the hot endpoints read their request themselves (validating with the same pydantic
models and parameter types that this route states in the document). A ``RawRoute`` is still an
``APIRoute``: it is registered once, matched, labelled in metrics and logs by its template, and
its OpenAPI operation (parameters, request body, responses, examples) is declared on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response

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
        # Starlette's wrapper, not FastAPI's: FastAPI's opens two exit stacks per request for
        # dependencies with ``yield``, and a raw endpoint has no dependencies.
        self.app = request_response(self.get_route_handler())

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return handler


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

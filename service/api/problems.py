"""The one place where failures become HTTP answers: RFC 9457 ``application/problem+json``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Annotated, Any, Final, NotRequired

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match
from typing_extensions import TypedDict

from service.errors import InvalidJson, RequestValidation, ServiceError, UnsupportedDtype

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
logger = logging.getLogger("service.errors")

#: Framework statuses (unknown route, wrong method...) get codes of their own too.
_HTTP_CODES: Final[dict[int, str]] = {
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
}


class Problem(TypedDict):
    """An error answer (RFC 9457). ``code`` is stable: match on it, not on ``detail``."""

    type: Annotated[str, Field(examples=["urn:spatial-dropout:problem:layer_not_found"])]
    title: Annotated[str, Field(examples=["Layer not found"])]
    status: Annotated[int, Field(examples=[404])]
    detail: Annotated[str, Field(examples=["No layer has the id or name 'sd'."])]
    code: Annotated[str, Field(examples=["layer_not_found"])]
    errors: NotRequired[
        Annotated[
            list[dict[str, Any]], Field(description="Field-level details of a validation_error.")
        ]
    ]


def problem(
    status: int, code: str, title: str, detail: str, errors: list[dict[str, Any]] | None = None
) -> Problem:
    """The problem document (RFC 9457) of a failure: every error answer outside /v2 is one."""
    body: Problem = {
        "type": f"urn:spatial-dropout:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors is not None:
        body["errors"] = errors
    return body


def problem_body(
    status: int, code: str, title: str, detail: str, errors: list[dict[str, Any]] | None = None
) -> bytes:
    return orjson.dumps(problem(status, code, title, detail, errors))


class V2Error(TypedDict):
    """An error under /v2: the Open Inference Protocol's clients read exactly this key."""

    error: Annotated[str, Field(examples=["No layer has the id or name 'sd'."])]


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_media_type(path: str) -> str:
    """The media type of an error answer at ``path``: the protocol's JSON under /v2."""
    return "application/json" if is_v2(path) else PROBLEM_MEDIA_TYPE


def error_document(
    path: str,
    status: int,
    code: str,
    title: str,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
) -> Problem | V2Error:
    """What an error answer at ``path`` says: a problem, or ``{"error": detail}`` under /v2."""
    if is_v2(path):
        return {"error": detail}
    return problem(status, code, title, detail, errors)


def _respond(
    path: str, status: int, document: Problem | V2Error, headers: Mapping[str, str] | None
) -> Response:
    """The one place a failure becomes a response: a problem, or a V2 error under /v2."""
    return Response(
        orjson.dumps(document),
        status_code=status,
        media_type=error_media_type(path),
        headers=headers,
    )


def error_response(
    path: str,
    exc: ServiceError,
    errors: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    document = error_document(path, exc.status, exc.code, exc.title, exc.detail, errors)
    return _respond(path, exc.status, document, {**exc.headers, **(headers or {})})


def validation_details(errors: Any) -> list[dict[str, Any]]:
    """Pydantic's errors without the echoed input (which may be huge or not JSON)."""
    return [
        {
            "loc": [str(part) for part in err.get("loc", ())],
            "msg": err.get("msg", ""),
            "type": err.get("type", ""),
        }
        for err in errors
    ]


def validation_error(exc: ValidationError | RequestValidationError) -> ServiceError:
    """A ServiceError for pydantic's complaints: malformed JSON stays apart from bad fields."""
    errors = exc.errors()
    for err in errors:
        if err.get("type") == "json_invalid":
            return InvalidJson(f"The body is not valid JSON: {err.get('msg', '')}.")
    first = errors[0] if errors else {}
    if _unknown_dtype_name(first):
        return UnsupportedDtype(str(first["input"])[:40])
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return RequestValidation(f"{where}: {first.get('msg', 'invalid')}")


def _unknown_dtype_name(err: Mapping[str, Any]) -> bool:
    """A string naming no dtype in a body's top-level ``dtype``: the code the tensor codec
    gives the same name inside ``input`` (and .npy gives an integer array)."""
    return (
        tuple(err.get("loc", ())) == ("dtype",)
        and err.get("type") == "literal_error"
        and isinstance(err.get("input"), str)
    )


#: The methods a 405's ``Allow`` may name (probed in this order, so the header is sorted).
_METHODS: Final = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """Every method some route serves at the request's path, for a 405's ``Allow``.

    Starlette names only the methods of the first route whose path matched, so ``PUT /layers``
    would answer ``Allow: POST`` although ``GET /layers`` exists too (RFC 9110 wants them all).
    Each method is probed through the routes' public ``matches`` on a fresh scope.
    """
    scope = request.scope
    probes = (
        {
            "type": "http",
            "path": scope["path"],
            "root_path": scope.get("root_path", ""),
            "method": m,
        }
        for m in _METHODS
    )
    routes = request.app.router.routes
    return ", ".join(
        probe["method"]
        for probe in probes
        if any(route.matches(probe)[0] is Match.FULL for route in routes)
    )


def service_error_response(path: str, exc: ServiceError) -> Response:
    """The answer to a ``ServiceError``; a 5xx is logged as well."""
    if exc.status >= 500:
        logger.warning("%s: %s", exc.code, exc.detail)
    return error_response(path, exc)


def validation_response(path: str, exc: RequestValidationError | ValidationError) -> Response:
    """The answer to a request that failed validation, with pydantic's errors as details."""
    err = validation_error(exc)
    details = None if isinstance(err, InvalidJson) else validation_details(exc.errors())
    return error_response(path, err, details)


def internal_error_response(exc: BaseException) -> Response:
    """The 500 of a failure nothing expected: the cause is logged for operators, and the
    client is told nothing about the internals."""
    logger.error("unhandled error", exc_info=exc)
    return Response(
        problem_body(
            500,
            "internal_error",
            "Internal server error",
            "The server failed to answer; the failure has been logged.",
        ),
        status_code=500,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def install(app: FastAPI) -> None:
    """Register the handlers that map every failure to a problem response."""

    async def on_service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        return service_error_response(request.url.path, exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError | ValidationError)
        return validation_response(request.url.path, exc)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400:
            # FastAPI's only 400: a body json.loads gave up on (nested past the recursion
            # limit, an integer past int's digit limit). /apply's orjson calls these invalid.
            return error_response(
                request.url.path,
                InvalidJson(
                    "The body is not JSON this server can read: too deeply nested, "
                    "or a number with too many digits."
                ),
            )
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        title = code.replace("_", " ").capitalize()
        headers = exc.headers
        allow = allowed_methods(request) if exc.status_code == 405 else ""
        if allow:
            headers = {**(headers or {}), "Allow": allow}
        path = request.url.path
        document = error_document(path, exc.status_code, code, title, str(exc.detail))
        return _respond(path, exc.status_code, document, headers)

    async def on_disconnect(_request: Request, _exc: Exception) -> Response:
        # The client left (or the body limit cut it off): nobody reads this answer.
        return Response(status_code=400)

    async def on_unexpected(_request: Request, exc: Exception) -> Response:
        return internal_error_response(exc)

    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(Exception, on_unexpected)

"""Every service error as a gRPC status: one table, keyed by the error's HTTP status."""

from __future__ import annotations

from typing import Final

import grpc

from service.errors import ServiceError

#: HTTP status -> gRPC status code (the pairs of grpc's own HTTP mapping, made specific).
STATUS_CODES: Final[dict[int, grpc.StatusCode]] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    406: grpc.StatusCode.INVALID_ARGUMENT,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    431: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}

#: Trailing metadata key that carries the error's stable code (``layer_not_found``, ...).
ERROR_CODE_KEY: Final = "error-code"


def status_code(error: ServiceError) -> grpc.StatusCode:
    """The gRPC status a client gets for ``error``; INTERNAL only for a server fault."""
    return STATUS_CODES.get(error.status, grpc.StatusCode.INTERNAL)

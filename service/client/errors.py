"""The errors a client call raises: one class per HTTP status family, one subclass per common code.

Catch by what you can act on: ``except LayerNotFound`` for one failure, ``except NotFound`` for
any 404, ``except ApiError`` for any answer the server refused, ``except ClientError`` for
anything this client raises (``ConnectionFailed`` when no answer came at all).
"""

from __future__ import annotations

from typing import Any, ClassVar


class ClientError(Exception):
    """Base of every error the client raises."""


class ConnectionFailed(ClientError):
    """No answer: the server could not be reached (after the retries), or the wire broke."""


class NotConnected(ConnectionFailed):
    """The connection could not be opened, so nothing was sent (safe to resend any call)."""


class ApiError(ClientError):
    """The server answered with an error status.

    ``code`` is the problem document's stable code (``layer_not_found``, ...); under ``/v2`` the
    protocol's answers carry no code, so there it is ``None`` and ``status`` says what failed.
    """

    #: The status this class stands for (``None``: the base, any status).
    family: ClassVar[int | None] = None

    def __init__(
        self,
        status: int,
        code: str | None,
        detail: str,
        *,
        title: str | None = None,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code or 'error'}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title
        #: The whole error document (a problem's ``errors`` list for validation errors, ...).
        self.body: dict[str, Any] = body or {}
        #: Seconds the server asked to wait (its Retry-After header), if it said.
        self.retry_after = retry_after


class BadRequest(ApiError):
    """400: the body could not be read (invalid_json, invalid_npy, invalid_infer_request, ...)."""

    family = 400


class Unauthorized(ApiError):
    """401: a bearer token is needed (pass ``token=``)."""

    family = 401


class Forbidden(ApiError):
    """403: the token is not allowed to do this."""

    family = 403


class NotFound(ApiError):
    """404: no such layer, model or model version."""

    family = 404


class NotAcceptable(ApiError):
    """406: the server cannot answer in the media type asked for."""

    family = 406


class Conflict(ApiError):
    """409: the name is taken, or the model is read-only."""

    family = 409


class PayloadTooLarge(ApiError):
    """413: the body, tensor, model or answer passes a server limit."""

    family = 413


class UnsupportedMediaType(ApiError):
    """415: the Content-Type or Content-Encoding is not taken."""

    family = 415


class Unprocessable(ApiError):
    """422: well-formed, but the request cannot be done (validation_error, rank_mismatch, ...)."""

    family = 422


class ServiceUnavailable(ApiError):
    """503: the store does not answer, or the server is busy; worth retrying later."""

    family = 503


class InsufficientStorage(ApiError):
    """507: the store is out of space."""

    family = 507


class LayerNotFound(NotFound):
    """``layer_not_found``: no layer has that id or name."""


class ModelNotFound(NotFound):
    """``model_not_found``: no stored model has that name."""


class NameConflict(Conflict):
    """``name_conflict``: a layer or model already has the name."""


class ValidationError(Unprocessable):
    """``validation_error``: a field is missing or of the wrong type (see ``body["errors"]``)."""


class InvalidRate(Unprocessable):
    """``invalid_rate``: the rate is outside [0, 1)."""


class RankMismatch(Unprocessable):
    """``rank_mismatch``: the tensor's rank is not the one the layer takes."""


class InvalidModel(Unprocessable):
    """``invalid_model``: the body is not an ONNX model, or it fails the checker."""


class UnknownTensor(Unprocessable):
    """``unknown_tensor``: an ``after`` tensor is not in the model."""


class BodyTooLarge(PayloadTooLarge):
    """``body_too_large``: the body passes SPATIAL_DROPOUT_MAX_BODY_BYTES (or the model limit)."""


class StoreUnavailable(ServiceUnavailable):
    """``store_unavailable``: the store (SQLite or PostgreSQL) did not answer."""


class ServerBusy(ServiceUnavailable):
    """``server_busy``: unfinished request bodies fill the server's budget."""


#: The classes raised for a problem's code; other codes get their status family's class.
BY_CODE: dict[str, type[ApiError]] = {
    "layer_not_found": LayerNotFound,
    "model_not_found": ModelNotFound,
    "name_conflict": NameConflict,
    "validation_error": ValidationError,
    "invalid_rate": InvalidRate,
    "rank_mismatch": RankMismatch,
    "invalid_model": InvalidModel,
    "unknown_tensor": UnknownTensor,
    "body_too_large": BodyTooLarge,
    "store_unavailable": StoreUnavailable,
    "server_busy": ServerBusy,
}

#: The classes raised for a status, when the code has no class of its own (or no code came).
BY_STATUS: dict[int, type[ApiError]] = {
    cls.family: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        NotAcceptable,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unprocessable,
        ServiceUnavailable,
        InsufficientStorage,
    )
    if cls.family is not None
}


def error_class(status: int, code: str | None) -> type[ApiError]:
    """The class an error answer raises: its code's, else its status family's, else ApiError."""
    if code is not None and code in BY_CODE and BY_CODE[code].family in (None, status):
        return BY_CODE[code]
    return BY_STATUS.get(status, ApiError)

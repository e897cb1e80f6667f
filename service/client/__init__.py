"""A typed Python client of the spatial-dropout service: numpy in and out, sync and async.

    from service.client import Client

    with Client("http://127.0.0.1:8000") as sd:
        sd.create_layer({"kind": "spatial_dropout_2d", "rate": 0.5, "name": "sd", "seed": 7})
        answer = sd.apply("sd", x, training=True)   # answer.output, answer.seed

Tensors travel as ``.npy`` (``/apply``) and in the Open Inference Protocol's binary extension
(``/v2`` infer); errors are raised as typed exceptions (service.client.errors) carrying the
problem's ``code``, ``status`` and ``detail``; idempotent calls are retried (RetryPolicy).
"""

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
    TensorInfo,
)
from service.client._clients import AsyncClient, Client
from service.client._core import RetryPolicy
from service.client.errors import (
    ApiError,
    BadRequest,
    BodyTooLarge,
    ClientError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InsufficientStorage,
    InvalidModel,
    InvalidRate,
    LayerNotFound,
    ModelNotFound,
    NameConflict,
    NotAcceptable,
    NotConnected,
    NotFound,
    PayloadTooLarge,
    RankMismatch,
    ServerBusy,
    ServiceUnavailable,
    StoreUnavailable,
    Unauthorized,
    UnknownTensor,
    Unprocessable,
    UnsupportedMediaType,
    ValidationError,
)

__all__ = [
    "ApiError",
    "Applied",
    "AsyncClient",
    "BadRequest",
    "BodyTooLarge",
    "Client",
    "ClientError",
    "Composed",
    "Conflict",
    "ConnectionFailed",
    "Engine",
    "Forbidden",
    "Inferred",
    "InsufficientStorage",
    "InvalidModel",
    "InvalidRate",
    "Layer",
    "LayerNotFound",
    "LayerPage",
    "Mask",
    "ModelInfo",
    "ModelNotFound",
    "ModelPage",
    "NameConflict",
    "NotAcceptable",
    "NotConnected",
    "NotFound",
    "PayloadTooLarge",
    "RankMismatch",
    "RetryPolicy",
    "ServerBusy",
    "ServiceUnavailable",
    "StoreUnavailable",
    "Stored",
    "TensorInfo",
    "Unauthorized",
    "UnknownTensor",
    "Unprocessable",
    "UnsupportedMediaType",
    "ValidationError",
]

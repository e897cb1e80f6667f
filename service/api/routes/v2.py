"""/v2: the Open Inference Protocol (KServe / Triton): each stored layer is a model, beside the
stored (and repository) ONNX models.

Bodies are read raw and split by ``Inference-Header-Content-Length`` (see service.codecs.v2);
errors here are ``{"error": "..."}``, which is what the protocol's clients parse.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Request, Response

from service import __version__
from service.api.bodies import BuffersResponse, read_body
from service.api.deps import PlaneDep, StoreDep, plane_of
from service.api.inline import InlineRequest
from service.api.routing import RawRoute, path_parameter
from service.codecs.v2 import INFER_REQUEST_EXAMPLE, DecodedInfer, decode_infer, encode_infer
from service.dataplane import DataPlane
from service.inference import PLATFORM, InferResult

HEADER_LENGTH: Final = "Inference-Header-Content-Length"
SERVER_NAME: Final = PLATFORM

_TAG: Final = "v2 (Open Inference Protocol)"
router = APIRouter(prefix="/v2", tags=[_TAG])

_NAME_DOC: Final = "The model's name: a stored model, a repository model, or a layer (or its id)."
_VERSION_DOC: Final = "Only '1' exists."
ModelName = Annotated[str, Path(description=_NAME_DOC)]
ModelVersion = Annotated[str, Path(description=_VERSION_DOC)]

_V2_ERROR = {
    "description": "An error, as the protocol's clients expect it",
    "content": {
        "application/json": {
            "schema": {"$ref": "#/components/schemas/V2Error"},
            "example": {"error": "No layer has the id or name 'sd'."},
        }
    },
}


def _ok(example: Any) -> dict[str, Any]:
    return {"description": "OK", "content": {"application/json": {"example": example}}}


@router.get(
    "",
    summary="Server metadata",
    responses={
        200: _ok(
            {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}
        )
    },
)
def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/health/live", summary="Liveness", responses={200: _ok({"live": True})})
def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready",
    summary="Readiness: the layer store answers",
    responses={200: _ok({"ready": True}), 503: _V2_ERROR},
)
def ready(store: StoreDep) -> dict[str, bool]:
    store.ping()
    return {"ready": True}


_METADATA_EXAMPLE = {
    "name": "sd",
    "versions": ["1"],
    "platform": "spatial-dropout",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, -1, -1, -1]}],
    "outputs": [
        {"name": "output", "datatype": "FP32", "shape": [-1, -1, -1, -1]},
        {"name": "mask", "datatype": "BOOL", "shape": [-1, -1]},
    ],
}


@router.get(
    "/models/{name}",
    summary="Model metadata",
    responses={200: _ok(_METADATA_EXAMPLE), 404: _V2_ERROR},
)
async def model_metadata(name: ModelName, plane: PlaneDep) -> dict[str, Any]:
    return (await plane.model_metadata(name)).as_dict()


@router.get(
    "/models/{name}/versions/{version}",
    summary="Model metadata (versioned)",
    responses={200: _ok(_METADATA_EXAMPLE), 404: _V2_ERROR},
)
async def model_version_metadata(
    name: ModelName, version: ModelVersion, plane: PlaneDep
) -> dict[str, Any]:
    return (await plane.model_metadata(name, version)).as_dict()


@router.get(
    "/models/{name}/ready",
    summary="Model readiness",
    responses={200: _ok({"name": "sd", "ready": True}), 404: _V2_ERROR},
)
async def model_ready(name: ModelName, plane: PlaneDep) -> dict[str, Any]:
    return {"name": name, "ready": await plane.model_ready(name)}


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Model readiness (versioned)",
    responses={200: _ok({"name": "sd", "ready": True}), 404: _V2_ERROR},
)
async def model_version_ready(
    name: ModelName, version: ModelVersion, plane: PlaneDep
) -> dict[str, Any]:
    return {"name": name, "ready": await plane.model_ready(name, version)}


_INFER_BODY: Final[dict[str, Any]] = {
    "required": True,
    "description": "A JSON infer request; with Inference-Header-Content-Length, that many "
    "bytes of JSON followed by the binary tensor data. Content-Type is not read.",
    "content": {
        "application/json": {
            "schema": {"$ref": "#/components/schemas/V2InferRequest"},
            "example": INFER_REQUEST_EXAMPLE,
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
_HEADER_LENGTH_PARAMETER: Final[dict[str, Any]] = {
    "name": HEADER_LENGTH,
    "in": "header",
    "required": False,
    "description": "Length of the JSON header when binary tensor data follows it.",
    "schema": {"type": "integer", "minimum": 1},
}

_INFER_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {
        "description": "The outputs; binary ones follow the JSON header, whose length is in "
        "Inference-Header-Content-Length.",
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/V2InferResponse"},
                "example": {
                    "model_name": "sd",
                    "model_version": "1",
                    "id": "42",
                    "parameters": {"seed": 7, "training": True},
                    "outputs": [
                        {
                            "name": "output",
                            "shape": [1, 1, 1, 3],
                            "datatype": "FP32",
                            "data": [2.0, 0.0, 6.0],
                        },
                        {
                            "name": "mask",
                            "shape": [1, 3],
                            "datatype": "BOOL",
                            "data": [True, False, True],
                        },
                    ],
                },
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "example": "(JSON header, then raw output bytes)",
            },
        },
    },
    400: _V2_ERROR,
    404: _V2_ERROR,
    413: _V2_ERROR,
    415: _V2_ERROR,
    422: _V2_ERROR,
}


async def infer(request: Request) -> Response:
    """Both infer routes: the model's name, and its version when the path has one."""
    plane = plane_of(request)
    body = await read_body(request)  # writable: the kernel answers in place in a binary tail
    name, version = request.path_params["name"], request.path_params.get("version")
    await plane.model_ready(name, version)  # an unknown model is a 404 whatever the body
    # An encoded body was inflated on its way in (BodyLimitMiddleware): this one is identity.
    decoded = await plane.run(len(body), _decode, plane, body, request.headers.get(HEADER_LENGTH))
    result = await plane.infer(name, version, decoded.request)
    return await plane.run(result.nbytes, _encode, result, decoded)


def infer_now(plane: DataPlane, request: InlineRequest) -> Response | None:
    """A layer in memory, run without waiting (service.api.inline); None for a stored model,
    a layer to fetch, or a version to word the error of."""
    name, version = request.path_params["name"], request.path_params.get("version")
    layer = plane.cached_layer(name)
    if layer is None or version is not None:
        return None
    decoded = _decode(plane, request.body, request.header(HEADER_LENGTH.lower().encode()))
    return _encode(plane.infer_layer(layer, decoded.request), decoded)


def _decode(plane: DataPlane, body: bytearray, header_length: str | None) -> DecodedInfer:
    return decode_infer(body, header_length, max_elements=plane.limits.max_tensor_elements)


def _encode(result: InferResult, decoded: DecodedInfer) -> Response:
    parts, header_size = encode_infer(result, decoded.binary)
    if header_size is None:
        return BuffersResponse(parts, media_type="application/json")
    return BuffersResponse(
        parts, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_size)}
    )


def _infer_route(path: str, summary: str, *parameters: dict[str, Any]) -> RawRoute:
    return RawRoute(
        path,
        infer,
        inline=infer_now,
        methods=["POST"],
        tags=[_TAG],
        summary=summary,
        parameters=[*parameters, _HEADER_LENGTH_PARAMETER],
        request_body=_INFER_BODY,
        responses=_INFER_RESPONSES,
    )


INFER_ROUTES: Final = [
    _infer_route(
        "/v2/models/{name}/infer", "Run the model or layer", path_parameter("name", _NAME_DOC)
    ),
    _infer_route(
        "/v2/models/{name}/versions/{version}/infer",
        "Run the model or layer (versioned)",
        path_parameter("name", _NAME_DOC),
        path_parameter("version", _VERSION_DOC),
    ),
]

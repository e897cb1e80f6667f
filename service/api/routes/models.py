"""/models: ONNX models (composed or not) in the layer store, served over /v2 by name."""

from __future__ import annotations

from typing import Any, Final

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from service import errors
from service.api.bodies import read_body
from service.api.deps import PageCursor, PageLimit, PlaneDep
from service.api.docs import problems
from service.dataplane import ModelRef
from service.layers.resolve import check_name

ONNX_MEDIA_TYPE: Final = "application/octet-stream"

router = APIRouter(prefix="/models", tags=["models"])


class TensorInfo(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 where any size goes.")


class ModelDescription(BaseModel):
    """A model as the store (or the model repository) holds it."""

    name: str
    sha256: str
    bytes: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    layers: list[dict[str, Any]] = Field(
        description="The layers inserted (the compose record, in insertion order)."
    )
    created_at: str | None = Field(description="When it was first stored (null: repository).")
    read_only: bool = Field(description="Served from SPATIAL_DROPOUT_MODEL_REPOSITORY.")


class ModelPage(BaseModel):
    """One page of ``GET /models``: stored models oldest first, then the repository's."""

    items: list[ModelDescription]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= to get the next page; null on the last page."
    )


_MODEL_EXAMPLE: Final[dict[str, Any]] = {
    "name": "classifier",
    "sha256": "9f2c" + "0" * 60,
    "bytes": 46830112,
    "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 64, 64]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}],
    "layers": [
        {
            "index": 0,
            "tensor": "/layer1/layer1.1/relu_1/Relu_output_0",
            "insertion": 0,
            "seed": 7,
            "stream_seed": 1234567,
            "layer": {"kind": "spatial_dropout_2d", "rate": 0.1, "data_format": "channels_first"},
            "prefix": "spatial_dropout_0/",
            "dropout": "spatial_dropout_0/Dropout_3",
            "platform": {"runtime": "onnxruntime", "provider": "CPUExecutionProvider"},
        }
    ],
    "created_at": "2026-12-01T23:00:00+00:00",
    "read_only": False,
}


def _json(example: Any, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": example}}}


_BINARY: Final = {
    "description": "The model's bytes",
    "content": {
        ONNX_MEDIA_TYPE: {
            "schema": {"type": "string", "format": "binary"},
            "example": "(the stored ONNX ModelProto)",
        }
    },
}


def _description(ref: ModelRef) -> ModelDescription:
    assert ref.info is not None
    return ModelDescription.model_validate(
        {**ref.info, "name": ref.name, "created_at": ref.created_at, "read_only": ref.read_only}
    )


@router.put(
    "/{name}",
    summary="Store an ONNX model under a name (replacing the one of that name)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                ONNX_MEDIA_TYPE: {
                    "schema": {"type": "string", "format": "binary"},
                    "example": "(an ONNX ModelProto, composed or not)",
                }
            },
        }
    },
    responses={
        200: _json(_MODEL_EXAMPLE, "Replaced"),
        201: _json(_MODEL_EXAMPLE, "Created; Location names it"),
        **problems(
            errors.NameConflict,
            errors.ReadOnlyModel,
            errors.InvalidName,
            errors.InvalidModel,
            errors.ExternalData,
            errors.ModelOpsetUnsupported,
            errors.ModelLoadFailed,
            errors.BodyTooLarge,
            errors.TooManyNodes,
        ),
    },
)
async def put_model(
    name: str, request: Request, plane: PlaneDep, response: Response
) -> ModelDescription:
    check_name(name)
    data = bytes(await read_body(request, plane.limits.max_model_bytes))
    stored, created = await run_in_threadpool(plane.put_model, name, data)
    response.status_code = 201 if created else 200
    if created:
        response.headers["Location"] = f"/models/{name}"
    return _description(stored)


@router.get(
    "",
    summary="List models: stored ones oldest first, then the repository's",
    responses={
        200: _json({"items": [_MODEL_EXAMPLE], "next_cursor": None}),
        **problems(errors.InvalidCursor),
    },
)
def list_models(plane: PlaneDep, limit: PageLimit = 100, cursor: PageCursor = None) -> ModelPage:
    refs, next_cursor = plane.model_page(limit, cursor)
    return ModelPage(items=[_description(ref) for ref in refs], next_cursor=next_cursor)


@router.get(
    "/{name}",
    summary="Read a model's description",
    responses={200: _json(_MODEL_EXAMPLE), **problems(errors.ModelNotFound, errors.BodyTooLarge)},
)
def read_model(name: str, plane: PlaneDep) -> ModelDescription:
    return _description(plane.described(name))


@router.get(
    "/{name}/onnx",
    summary="Download the model's bytes",
    response_class=Response,
    responses={
        200: _BINARY,
        **problems(errors.ModelNotFound),
    },
)
def download_model(name: str, plane: PlaneDep) -> Response:
    return Response(plane.model_bytes(name), media_type=ONNX_MEDIA_TYPE)


@router.delete(
    "/{name}",
    status_code=204,
    summary="Delete a stored model",
    responses={
        204: {"description": "Deleted"},
        **problems(errors.ModelNotFound, errors.ReadOnlyModel),
    },
)
def delete_model(name: str, plane: PlaneDep) -> Response:
    plane.delete_model(name)
    return Response(status_code=204)

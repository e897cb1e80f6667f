"""/layers: create, list, read and delete layer specs; their Keras form."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response

from service import errors
from service.api.deps import AcceptsJson, PageCursor, PageLimit, SendsJson, SettingsDep, StoreDep
from service.api.docs import problems
from service.layers.resolve import resolve_body, to_keras
from service.layers.spec import KerasSerialized, Layer, LayerBody, LayerPage

router = APIRouter(prefix="/layers", tags=["layers"], dependencies=[AcceptsJson])

_LAYER_EXAMPLE = {
    "id": "0b5f6a2c9d8e4f00a1b2c3d4e5f60718",
    "name": "sd",
    "kind": "spatial_dropout_2d",
    "rate": 0.5,
    "data_format": "channels_last",
    "batch_size": None,
    "trainable": True,
    "weights": [],
    "seed": 7,
    "dtype": None,
    "noise_shape": None,
    "created_at": "2026-11-27T03:00:00.000000Z",
}


def _json(example: Any, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"example": example}}}


CreateBody = Annotated[
    LayerBody,
    Body(
        openapi_examples={
            "spec": {
                "summary": "A spec",
                "value": {"kind": "spatial_dropout_2d", "rate": 0.5, "name": "sd", "seed": 7},
            },
            "keras3": {
                "summary": "A Keras 3 serialized layer",
                "value": {
                    "module": "keras.layers",
                    "class_name": "SpatialDropout2D",
                    "config": {"rate": 0.25, "data_format": "channels_first", "seed": 3},
                    "registered_name": None,
                },
            },
            "tf_keras2": {
                "summary": "A tf.keras 2 config",
                "value": {
                    "class_name": "SpatialDropout1D",
                    "config": {
                        "name": "sd1",
                        "trainable": True,
                        "dtype": "float32",
                        "rate": 0.1,
                        "noise_shape": None,
                        "seed": None,
                    },
                },
            },
        }
    ),
]


@router.post(
    "",
    status_code=201,
    dependencies=[SendsJson],
    summary="Create a layer from a spec or a Keras config",
    responses={
        201: _json(_LAYER_EXAMPLE, "Created; Location names it"),
        **problems(
            errors.NameConflict,
            errors.InvalidRate,
            errors.RequestValidation,
            errors.InvalidJson,
            errors.UnsupportedMediaType,
            errors.NotAcceptable,
            errors.BodyTooLarge,
            errors.StoreUnavailable,
        ),
    },
)
def create_layer(
    body: CreateBody, store: StoreDep, settings: SettingsDep, response: Response
) -> Layer:
    layer = store.create(resolve_body(body, settings.data_format))
    response.headers["Location"] = f"/layers/{layer.id}"
    return layer


@router.get(
    "",
    summary="List layers, oldest first, a page at a time",
    responses={
        200: _json({"items": [_LAYER_EXAMPLE], "next_cursor": None}),
        **problems(errors.RequestValidation, errors.InvalidCursor, errors.NotAcceptable),
    },
)
def list_layers(store: StoreDep, limit: PageLimit = 100, cursor: PageCursor = None) -> LayerPage:
    page = store.list(limit, cursor)
    return LayerPage(items=page.layers, next_cursor=page.next_cursor)


@router.get(
    "/{ref}",
    summary="Read a layer by id or name",
    responses={200: _json(_LAYER_EXAMPLE), **problems(errors.LayerNotFound, errors.NotAcceptable)},
)
def read_layer(ref: str, store: StoreDep) -> Layer:
    return store.get(ref)


@router.delete(
    "/{ref}",
    status_code=204,
    summary="Delete a layer by id or name",
    responses={204: {"description": "Deleted"}, **problems(errors.LayerNotFound)},
)
def delete_layer(ref: str, store: StoreDep) -> Response:
    store.delete(ref)
    return Response(status_code=204)


@router.get(
    "/{ref}/keras",
    summary="The layer in Keras 3 serialized form (keras.layers.deserialize takes it)",
    responses={
        200: _json(
            {
                "module": "keras.layers",
                "class_name": "SpatialDropout2D",
                "config": {
                    "name": "sd",
                    "rate": 0.5,
                    "seed": 7,
                    "dtype": "float32",
                    "data_format": "channels_last",
                },
                "registered_name": None,
            }
        ),
        **problems(errors.LayerNotFound, errors.NotAcceptable),
    },
)
def keras_form(ref: str, store: StoreDep) -> KerasSerialized:
    return to_keras(store.get(ref))

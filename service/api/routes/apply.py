"""POST /apply: run a layer on a tensor posted as JSON or as a .npy file."""

from __future__ import annotations

from typing import Annotated, Any, Final

import orjson
from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from service import errors
from service.api.apply_models import ApplyEnvelope
from service.api.deps import JSON, SettingsDep, StoreDep
from service.api.docs import problems
from service.api.negotiation import check_acceptable, require_media_type
from service.api.problems import validation_error
from service.codecs.json_tensor import decode_tensor, encode_tensor, may_hold_booleans
from service.codecs.npy import decode_npy, encode_npy
from service.dataplane import Engine, apply_layer
from service.layers.resolve import from_keras, resolve
from service.layers.spec import KerasLayerConfig, Layer
from service.onnx.engine import OnnxEngine
from service.settings import Settings
from service.store import LayerStore

NPY: Final = "application/x-npy"
_QUERY_ONLY: Final = ("layer", "training", "seed", "sample_offset", "engine")

router = APIRouter(tags=["apply"])

_JSON_EXAMPLE = {
    "output": {
        "shape": [1, 2, 2, 3],
        "dtype": "float32",
        "data": [2, 0, 6, 8, 0, 12, 14, 0, 18, 20, 0, 24],
    },
    "seed": 7,
    "training": True,
    "layer": "sd",
    "mask": [[True, False, True]],
}

_OPENAPI: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {
                "schema": {"$ref": "#/components/schemas/ApplyRequest"},
                "examples": {
                    "flat": {
                        "summary": "A stored layer, a flat tensor, training mode",
                        "value": {
                            "layer": "sd",
                            "training": True,
                            "seed": 7,
                            "return_mask": True,
                            "input": {
                                "shape": [1, 2, 2, 3],
                                "dtype": "float32",
                                "data": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
                            },
                        },
                    },
                    "nested": {
                        "summary": "An inline spec and nested lists",
                        "value": {
                            "spec": {"kind": "spatial_dropout_1d", "rate": 0.5},
                            "training": True,
                            "seed": 1,
                            "input": [[[1.0, 2.0], [3.0, 4.0]]],
                        },
                    },
                    "onnxruntime": {
                        "summary": "The same answer, from the layer's exported ONNX graph",
                        "value": {
                            "layer": "sd",
                            "training": True,
                            "seed": 7,
                            "engine": "onnxruntime",
                            "input": [[[[1.0, 2.0, 3.0]]]],
                        },
                    },
                },
            },
            NPY: {
                "schema": {"type": "string", "format": "binary"},
                "example": "(a .npy file, as numpy.save writes it)",
            },
        },
    },
}


@router.post(
    "/apply",
    summary="Run a layer on a tensor (JSON, or .npy with query parameters)",
    openapi_extra=_OPENAPI,
    responses={
        200: {
            "description": "The output, in the form the input had. The .npy answer carries "
            "the seed used in X-Seed.",
            "content": {
                JSON: {
                    "schema": {"$ref": "#/components/schemas/ApplyResponse"},
                    "example": _JSON_EXAMPLE,
                },
                NPY: {"schema": {"type": "string", "format": "binary"}, "example": "(a .npy file)"},
            },
            "headers": {
                "X-Seed": {
                    "description": "The seed used (.npy answers).",
                    "schema": {"type": "string"},
                },
            },
        },
        **problems(
            errors.InvalidJson,
            errors.LayerNotFound,
            errors.RankMismatch,
            errors.RequestValidation,
            errors.NotAcceptable,
            errors.BodyTooLarge,
            errors.UnsupportedMediaType,
            errors.UnsupportedOnnxDtype,
        ),
    },
)
async def apply(
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    layer: Annotated[
        str | None, Query(description=".npy form only: the stored layer's id or name.")
    ] = None,
    training: Annotated[bool, Query(description=".npy form only: training mode.")] = False,
    seed: Annotated[
        int | None, Query(ge=0, lt=2**64, description=".npy form only: the seed.")
    ] = None,
    sample_offset: Annotated[
        int, Query(ge=0, lt=2**62, description=".npy form only: first sample's index.")
    ] = 0,
    engine: Annotated[
        Engine, Query(description=".npy form only: numpy, or onnxruntime (the ONNX graph).")
    ] = "numpy",
) -> Response:
    media = require_media_type(request.headers.get("content-type"), [JSON, NPY])
    accept = request.headers.get("accept")
    if media == NPY:
        check_acceptable(accept, NPY)
        if layer is None:
            raise errors.RequestValidation("layer: the .npy form needs ?layer=<id or name>.")
        body = await request.body()
        onnx = _onnx_engine(request) if engine == "onnxruntime" else None
        return await run_in_threadpool(
            _apply_npy, store, settings, body, layer, training, seed, sample_offset, onnx
        )
    check_acceptable(accept, JSON)
    stray = [name for name in _QUERY_ONLY if name in request.query_params]
    if stray:
        raise errors.RequestValidation(
            f"Query parameter(s) {', '.join(stray)} belong to the .npy form; "
            "a JSON request carries them in its body."
        )
    body = await request.body()
    return await run_in_threadpool(_apply_json, store, settings, body, _onnx_engine(request))


def _apply_npy(
    store: LayerStore,
    settings: Settings,
    body: bytes,
    ref: str,
    training: bool,
    seed: int | None,
    sample_offset: int,
    onnx: OnnxEngine | None,
) -> Response:
    x = decode_npy(body, max_elements=settings.max_tensor_elements)
    applied = apply_layer(
        store.get(ref), x, training=training, seed=seed, sample_offset=sample_offset, onnx=onnx
    )
    return Response(
        encode_npy(applied.output),
        media_type=NPY,
        headers={"X-Seed": str(applied.seed), "X-Layer": _ascii_header(applied.layer_name)},
    )


def _apply_json(
    store: LayerStore, settings: Settings, body: bytes, onnx_engine: OnnxEngine
) -> Response:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidJson(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise errors.RequestValidation("The body must be a JSON object.")
    if "input" not in payload:
        raise errors.RequestValidation("input: Field required")
    raw_input = payload.pop("input")
    try:
        envelope = ApplyEnvelope.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc) from None
    layer = _layer_of(envelope, store, settings)
    x, form = decode_tensor(
        raw_input,
        dtype=envelope.dtype,
        max_elements=settings.max_tensor_elements,
        no_booleans=not may_hold_booleans(body, payload),
    )
    applied = apply_layer(
        layer,
        x,
        training=envelope.training,
        seed=envelope.seed,
        sample_offset=envelope.sample_offset,
        onnx=onnx_engine if envelope.engine == "onnxruntime" else None,
    )
    answer: dict[str, Any] = {
        "output": encode_tensor(applied.output, form),
        "seed": applied.seed,
        "training": envelope.training,
        "layer": applied.layer_name,
    }
    if envelope.return_mask:
        answer["mask"] = applied.mask_matrix()
    return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON)


def _layer_of(envelope: ApplyEnvelope, store: LayerStore, settings: Settings) -> Any:
    if (envelope.layer is None) == (envelope.spec is None):
        raise errors.RequestValidation("Give exactly one of `layer` (stored) and `spec` (inline).")
    if envelope.layer is not None:
        layer: Layer = store.get(envelope.layer)
        return layer
    assert envelope.spec is not None
    spec = envelope.spec
    return resolve(
        from_keras(spec) if isinstance(spec, KerasLayerConfig) else spec, settings.data_format
    )


def _onnx_engine(request: Request) -> OnnxEngine:
    """The app's onnxruntime engine (opened in the lifespan; its caches serve every request)."""
    onnx: OnnxEngine = request.app.state.onnx_engine
    return onnx


def _ascii_header(value: str) -> str:
    """Header values must be latin-1; names may be any unicode, so escape what is not ASCII."""
    return value if value.isascii() else value.encode("unicode_escape").decode("ascii")

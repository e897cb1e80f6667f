"""POST /apply: run a layer on a tensor posted as JSON or as a .npy file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from service import errors
from service.api.apply_models import ApplyEnvelope, NpyQuery, query_parameters
from service.api.bodies import BuffersResponse, read_body
from service.api.deps import JSON, settings_of, store_of
from service.api.docs import problems
from service.api.negotiation import check_acceptable, require_media_type
from service.api.offload import maybe_in_thread, stored_layer
from service.api.problems import validation_error
from service.codecs.json_tensor import decode_tensor, encode_tensor, may_hold_booleans
from service.codecs.npy import decode_npy, encode_npy_parts
from service.dataplane import apply_layer
from service.layers.resolve import ResolvedSpec, from_keras, resolve
from service.layers.spec import KerasLayerConfig, Layer
from service.onnx.engine import OnnxEngine
from service.settings import Settings

NPY: Final = "application/x-npy"
_QUERY_ONLY: Final = tuple(NpyQuery.model_fields)

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
    "parameters": query_parameters(NpyQuery),
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
async def apply(request: Request) -> Response:
    # No FastAPI parameters or dependencies here: this is the hot path, and their machinery
    # cost more than a small tensor's whole dropout. The query is validated by NpyQuery.
    store, settings = store_of(request), settings_of(request)
    media = require_media_type(request.headers.get("content-type"), [JSON, NPY])
    accept = request.headers.get("accept")
    if media == NPY:
        check_acceptable(accept, NPY)
        try:
            query = NpyQuery.model_validate(request.query_params)
        except ValidationError as exc:
            raise validation_error(exc) from None
        if query.layer is None:
            raise errors.RequestValidation("layer: the .npy form needs ?layer=<id or name>.")
        body = await read_body(request)  # writable: the kernel answers in place
        stored = await stored_layer(store, query.layer)
        onnx = _onnx_engine(request) if query.engine == "onnxruntime" else None
        return await maybe_in_thread(len(body), _apply_npy, settings, body, stored, query, onnx)
    check_acceptable(accept, JSON)
    stray = [name for name in _QUERY_ONLY if name in request.query_params]
    if stray:
        raise errors.RequestValidation(
            f"Query parameter(s) {', '.join(stray)} belong to the .npy form; "
            "a JSON request carries them in its body."
        )
    raw = await request.body()
    size = len(raw)
    parsed = await maybe_in_thread(size, _parse_json, raw)
    envelope = parsed.envelope
    if (envelope.layer is None) == (envelope.spec is None):
        raise errors.RequestValidation("Give exactly one of `layer` (stored) and `spec` (inline).")
    if envelope.layer is not None:
        chosen: Layer | ResolvedSpec = await stored_layer(store, envelope.layer)
    else:
        assert envelope.spec is not None
        spec = envelope.spec
        plain = from_keras(spec) if isinstance(spec, KerasLayerConfig) else spec
        chosen = resolve(plain, settings.data_format)
    onnx = _onnx_engine(request) if envelope.engine == "onnxruntime" else None
    return await maybe_in_thread(size, _apply_json, settings, parsed, chosen, onnx)


def _apply_npy(
    settings: Settings,
    body: bytearray,
    layer: Layer,
    query: NpyQuery,
    onnx: OnnxEngine | None,
) -> Response:
    x = decode_npy(body, max_elements=settings.max_tensor_elements)
    applied = apply_layer(
        layer,
        x,
        training=query.training,
        seed=query.seed,
        sample_offset=query.sample_offset,
        onnx=onnx,
        in_place=True,
    )
    header, data = encode_npy_parts(applied.output)
    return BuffersResponse(
        [header, data],
        media_type=NPY,
        headers={"X-Seed": str(applied.seed), "X-Layer": _ascii_header(layer.name)},
    )


@dataclass(frozen=True, slots=True)
class _ParsedJson:
    envelope: ApplyEnvelope
    tensor: object
    no_booleans: bool


def _parse_json(body: bytes) -> _ParsedJson:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidJson(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise errors.RequestValidation("The body must be a JSON object.")
    if "input" not in payload:
        raise errors.RequestValidation("input: Field required")
    tensor = payload.pop("input")
    try:
        envelope = ApplyEnvelope.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc) from None
    return _ParsedJson(envelope, tensor, not may_hold_booleans(body, payload))


def _apply_json(
    settings: Settings,
    parsed: _ParsedJson,
    layer: Layer | ResolvedSpec,
    onnx: OnnxEngine | None,
) -> Response:
    envelope = parsed.envelope
    x, form = decode_tensor(
        parsed.tensor,
        dtype=envelope.dtype,
        max_elements=settings.max_tensor_elements,
        no_booleans=parsed.no_booleans,
    )
    applied = apply_layer(
        layer,
        x,
        training=envelope.training,
        seed=envelope.seed,
        sample_offset=envelope.sample_offset,
        onnx=onnx,
        in_place=True,  # x was made from the JSON for this call alone
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


def _onnx_engine(request: Request) -> OnnxEngine:
    """The app's onnxruntime engine (opened in the lifespan; its caches serve every request)."""
    onnx: OnnxEngine = request.app.state.onnx_engine
    return onnx


def _ascii_header(value: str) -> str:
    """Header values must be latin-1; names may be any unicode, so escape what is not ASCII."""
    return value if value.isascii() else value.encode("unicode_escape").decode("ascii")

"""POST /apply: run a layer on a tensor posted as JSON or as a .npy file."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson
from fastapi import Request, Response
from pydantic import ValidationError

from service import errors
from service.api.apply_models import ApplyRequest, ApplyResponse, NpyQuery
from service.api.bodies import BuffersResponse, read_body
from service.api.deps import JSON, plane_of
from service.api.docs import problems
from service.api.inline import InlineRequest
from service.api.negotiation import check_acceptable, media_type, require_media_type
from service.api.problems import validation_error
from service.api.routing import RawRoute, query_parameters
from service.codecs.json_tensor import decode_tensor, encode_tensor, may_hold_booleans
from service.codecs.npy import decode_npy, encode_npy_parts
from service.dataplane import DataPlane
from service.layers.resolve import ResolvedSpec
from service.layers.spec import Layer

NPY: Final = "application/x-npy"
_QUERY_ONLY: Final = tuple(NpyQuery.model_fields)

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

_REQUEST_BODY: Final[dict[str, Any]] = {
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
}


async def apply(request: Request) -> Response:
    # The query is validated by NpyQuery, the JSON body by ApplyRequest: the models the
    # route documents.
    plane = plane_of(request)
    media = require_media_type(request.headers.get("content-type"), [JSON, NPY])
    accept = request.headers.get("accept")
    if media == NPY:
        check_acceptable(accept, NPY)
        query, ref = _npy_query(request.scope["query_string"])
        body = await read_body(request)  # writable: the kernel answers in place
        stored = await plane.layer(ref)
        return await plane.run(len(body), _apply_npy, plane, body, stored, query)
    check_acceptable(accept, JSON)
    _no_npy_query(request.scope["query_string"])
    raw = await request.body()
    size = len(raw)
    parsed = await plane.run(size, _parse_json, raw)
    named = _stored_ref(parsed.envelope)
    if named is not None:
        chosen: Layer | ResolvedSpec = await plane.layer(named)
    else:
        assert parsed.envelope.spec is not None
        chosen = plane.inline(parsed.envelope.spec)
    return await plane.run(size, _apply_json, plane, parsed, chosen)


def apply_now(plane: DataPlane, request: InlineRequest) -> Response | None:
    """Either form with its layer in memory (or given inline), answered without waiting
    (service.api.inline); None for a layer to fetch, or a media type to refuse."""
    media = media_type(request.header(b"content-type"))
    accept = request.header(b"accept")
    if media == NPY:
        check_acceptable(accept, NPY)
        query, ref = _npy_query(request.query_string)
        stored = plane.cached_layer(ref)
        if stored is None:
            return None
        return _apply_npy(plane, request.body, stored, query)
    if media != JSON:
        return None
    check_acceptable(accept, JSON)
    _no_npy_query(request.query_string)
    parsed = _parse_json(request.body)  # reads the body, and leaves it as it was
    named = _stored_ref(parsed.envelope)
    if named is None:
        assert parsed.envelope.spec is not None
        chosen: Layer | ResolvedSpec | None = plane.inline(parsed.envelope.spec)
    else:
        chosen = plane.cached_layer(named)
    if chosen is None:
        return None
    return _apply_json(plane, parsed, chosen)


def _no_npy_query(query_string: bytes) -> None:
    """A JSON request carries its parameters in its body: the .npy form's in the query are
    refused, not silently ignored."""
    names = {name for name, _ in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)}
    stray = [name for name in _QUERY_ONLY if name in names]
    if stray:
        raise errors.RequestValidation(
            f"Query parameter(s) {', '.join(stray)} belong to the .npy form; "
            "a JSON request carries them in its body."
        )


def _stored_ref(envelope: ApplyRequest) -> str | None:
    """The stored layer a JSON request names, or None when it gives its spec inline."""
    if (envelope.layer is None) == (envelope.spec is None):
        raise errors.RequestValidation("Give exactly one of `layer` (stored) and `spec` (inline).")
    return envelope.layer


def _npy_query(query_string: bytes) -> tuple[NpyQuery, str]:
    """The .npy form's query parameters, and the layer they name."""
    if len(query_string) <= 512:
        return _remembered_query(query_string)
    return _parse_npy_query(query_string)


def _parse_npy_query(query_string: bytes) -> tuple[NpyQuery, str]:
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    try:
        query = NpyQuery.model_validate_strings(dict(pairs))
    except ValidationError as exc:
        raise validation_error(exc) from None
    if query.layer is None:
        raise errors.RequestValidation("layer: the .npy form needs ?layer=<id or name>.")
    return query, query.layer


#: Clients repeat their query strings: each distinct short one is parsed once (a refusal is
#: not kept), so the memo holds at most 128 KiB of them.
_remembered_query = functools.lru_cache(maxsize=256)(_parse_npy_query)


def _apply_npy(plane: DataPlane, body: bytearray, layer: Layer, query: NpyQuery) -> Response:
    x = decode_npy(body, max_elements=plane.limits.max_tensor_elements)
    applied = plane.apply(
        layer,
        x,
        training=query.training,
        seed=query.seed,
        sample_offset=query.sample_offset,
        engine=query.engine,
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
    envelope: ApplyRequest
    tensor: object
    no_booleans: bool


def _parse_json(body: bytes | bytearray) -> _ParsedJson:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidJson(f"The body is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise errors.RequestValidation("The body must be a JSON object.")
    try:
        envelope = ApplyRequest.model_validate(payload)
    except ValidationError as exc:
        raise validation_error(exc) from None
    tensor = payload.pop("input")  # what remains is what the booleans are counted in
    return _ParsedJson(envelope, tensor, not may_hold_booleans(body, payload))


def _apply_json(plane: DataPlane, parsed: _ParsedJson, layer: Layer | ResolvedSpec) -> Response:
    envelope = parsed.envelope
    x, form = decode_tensor(
        parsed.tensor,
        dtype=envelope.dtype,
        max_elements=plane.limits.max_tensor_elements,
        no_booleans=parsed.no_booleans,
    )
    applied = plane.apply(
        layer,
        x,
        training=envelope.training,
        seed=envelope.seed,
        sample_offset=envelope.sample_offset,
        engine=envelope.engine,
        in_place=True,  # x was made from the JSON for this call alone
    )
    answer: ApplyResponse = {
        "output": encode_tensor(applied.output, form),
        "seed": applied.seed,
        "training": envelope.training,
        "layer": applied.layer_name,
    }
    if envelope.return_mask:
        answer["mask"] = applied.mask_matrix()
    return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON)


def _ascii_header(value: str) -> str:
    """Header values must be latin-1; names may be any unicode, so escape what is not ASCII."""
    return value if value.isascii() else value.encode("unicode_escape").decode("ascii")


ROUTES: Final = [
    RawRoute(
        "/apply",
        apply,
        inline=apply_now,
        methods=["POST"],
        tags=["apply"],
        summary="Run a layer on a tensor (JSON, or .npy with query parameters)",
        parameters=query_parameters(NpyQuery),
        request_body=_REQUEST_BODY,
        responses={
            200: {
                "description": "The output, in the form the input had. The .npy answer carries "
                "the seed used in X-Seed.",
                "content": {
                    JSON: {
                        "schema": {"$ref": "#/components/schemas/ApplyResponse"},
                        "example": _JSON_EXAMPLE,
                    },
                    NPY: {
                        "schema": {"type": "string", "format": "binary"},
                        "example": "(a .npy file)",
                    },
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
]

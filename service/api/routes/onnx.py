"""GET /layers/{ref}/onnx: a stored layer as an ONNX model that agrees with /apply bit for bit."""

from __future__ import annotations

from typing import Annotated, Final
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Response
from pydantic import WithJsonSchema

from service import errors
from service.api.deps import StoreDep
from service.api.docs import problems
from service.api.negotiation import check_acceptable
from service.core.bounds import MAX_RANK
from service.onnx.export import DEFAULT_DTYPE, export_layer, export_seed
from service.onnx.graph import ONNX_DTYPES
from service.onnx.opsets import DEFAULT_OPSET, MIN_OPSET
from service.params import DEFAULT_MASK, FROM_TEXT, Mask, Opset, Seed, TensorDtype

ONNX_MEDIA_TYPE: Final = "application/octet-stream"

router = APIRouter(tags=["onnx"])

_DESCRIPTION: Final = f"""\
The model takes `X` and `training_mode` (a bool scalar, false unless fed: then `Y` is `X`) and
answers `Y` and `mask` (the keep mask in its broadcast shape, `[N, 1, 1, C]` for a
channels-last 2D layer). Its first training run in a fresh onnxruntime session (on Linux) gives
exactly what `/apply` gives for the same seed; run j gives the stream seed + j - 1 (see the
README). The user's seed, the layer and the producer version are in the model's
`metadata_props`; the seed used is also in `X-Seed`. Opsets from {MIN_OPSET} to the newest
both the server's onnx and onnxruntime support (default {DEFAULT_OPSET}).

`mask=portable` computes the stream in the graph instead (no Dropout, no random operator):
every run, on any ONNX runtime (onnxruntime, onnx.reference, OpenVINO, tract and
onnxruntime-web are tested), gives `/apply`'s answer; `training_mode` is then a plain input
with no default, which the caller feeds.
"""


@router.get(
    "/layers/{ref}/onnx",
    summary="The layer as an ONNX model (Dropout on a channel mask, training mode included)",
    description=_DESCRIPTION,
    response_class=Response,
    responses={
        200: {
            "description": "The serialized ONNX ModelProto.",
            "content": {
                ONNX_MEDIA_TYPE: {
                    "schema": {"type": "string", "format": "binary"},
                    "example": "(an ONNX model: onnx.load or onnxruntime.InferenceSession take it)",
                }
            },
            "headers": {
                "X-Seed": {"description": "The user seed baked in.", "schema": {"type": "string"}},
                "Content-Disposition": {
                    "description": "attachment; filename=<layer name>.onnx",
                    "schema": {"type": "string"},
                },
            },
        },
        **problems(
            errors.LayerNotFound,
            errors.SeedRequired,
            errors.UnsupportedOpset,
            errors.UnsupportedOnnxDtype,
            errors.RequestValidation,
            errors.NotAcceptable,
        ),
    },
)
def onnx_model(
    ref: str,
    store: StoreDep,
    opset: Annotated[
        Opset,
        FROM_TEXT,
        Query(description=f"ONNX opset, from {MIN_OPSET} (default {DEFAULT_OPSET})."),
    ] = DEFAULT_OPSET,
    seed: Annotated[
        Annotated[Seed, FROM_TEXT] | None,
        Query(description="User seed; default the layer's (one is required)."),
    ] = None,
    dtype: Annotated[
        TensorDtype,
        # The document names the dtypes an ONNX model is built in; bfloat16 still validates,
        # so that it is refused with unsupported_onnx_dtype, a code of its own.
        WithJsonSchema({"type": "string", "enum": sorted(ONNX_DTYPES)}),
        Query(description="Tensor dtype of X and Y; bfloat16 is refused (no onnxruntime kernel)."),
    ] = DEFAULT_DTYPE,
    rank: Annotated[
        int | None,
        Query(ge=0, le=MAX_RANK, description="Input rank; needed for dropout without noise_shape."),
    ] = None,
    mask: Annotated[Mask, Query()] = DEFAULT_MASK,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    check_acceptable(accept, ONNX_MEDIA_TYPE)
    layer = store.get(ref)
    model = export_layer(layer, seed=seed, opset=opset, dtype=dtype, rank=rank, mask=mask)
    return Response(
        model.SerializeToString(),
        media_type=ONNX_MEDIA_TYPE,
        headers={
            "X-Seed": str(export_seed(layer, seed)),
            "Content-Disposition": _attachment(f"{layer.name}.onnx"),
        },
    )


def _attachment(filename: str) -> str:
    """RFC 6266: an ASCII fallback name, and the exact (unicode) name percent-encoded."""
    fallback = "".join(
        ch if ch.isascii() and ch.isprintable() and ch not in '"\\' else "_" for ch in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"

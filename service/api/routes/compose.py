"""POST /layers/{ref}/compose: an ONNX model in, the model with the layer inserted out."""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Header, Query, Request, Response

from service import errors
from service.api.deps import PlaneDep
from service.api.docs import problems
from service.api.negotiation import check_acceptable, require_media_type
from service.compose import RECORD_KEY
from service.params import DEFAULT_MASK, FROM_TEXT, Mask, Seed

ONNX_MEDIA_TYPE: Final = "application/octet-stream"

router = APIRouter(tags=["onnx"])

_DESCRIPTION: Final = f"""\
R keras's `layer_spatial_dropout_2d(object = <model>)` for ONNX models: the body is a model
(every tensor inside it: external data is refused, and no file it names is read), the answer
the same model with the layer inserted after each `after` tensor (a graph input, initializer
or node output of the main graph; none: after the model's only output). The composed model
keeps the inputs and outputs (names and order), opset and IR version, and gains one bool
scalar input `training_mode` (default false; reused when the model has it). Inference mode:
the model's own outputs, bit for bit. Training mode, first run of a fresh onnxruntime session
(CPU, Linux): insertion i gives exactly `/apply` of the layer on its tensor with seed + i. The
inserted layers are recorded in `metadata_props` under `{RECORD_KEY}` (a JSON object; see the
README). Opsets 13 to the newest the server's onnx and onnxruntime load.

`mask=portable` computes each layer's stream in the graph (no Dropout, no random operator):
insertion i is then `/apply` with seed + i on any ONNX runtime (onnxruntime, onnx.reference,
OpenVINO, tract and onnxruntime-web are tested), every run, and `training_mode` is a plain
bool input with no default, which the caller feeds. A model's layers share one form.
"""

_OPENAPI: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {
            ONNX_MEDIA_TYPE: {
                "schema": {"type": "string", "format": "binary"},
                "example": "(an ONNX ModelProto, e.g. written by torch.onnx.export)",
            }
        },
    }
}


@router.post(
    "/layers/{ref}/compose",
    summary="Insert the layer into an ONNX model, after the tensors named",
    description=_DESCRIPTION,
    response_class=Response,
    openapi_extra=_OPENAPI,
    responses={
        200: {
            "description": "The composed model (a serialized ONNX ModelProto).",
            "content": {
                ONNX_MEDIA_TYPE: {
                    "schema": {"type": "string", "format": "binary"},
                    "example": "(the model: onnx.load or onnxruntime.InferenceSession take it)",
                }
            },
            "headers": {
                "X-Seed": {
                    "description": "The user seed of insertion 0 (insertion i: seed + i).",
                    "schema": {"type": "string"},
                },
            },
        },
        **problems(
            errors.LayerNotFound,
            errors.InvalidModel,
            errors.ExternalData,
            errors.UnknownTensor,
            errors.AmbiguousInsertionPoint,
            errors.InvalidInsertionPoint,
            errors.RankMismatch,
            errors.ModelOpsetUnsupported,
            errors.InvalidTrainingMode,
            errors.MixedMaskForms,
            errors.UnsupportedOnnxDtype,
            errors.RequestValidation,
            errors.BodyTooLarge,
            errors.TooManyNodes,
            errors.UnsupportedMediaType,
            errors.NotAcceptable,
        ),
    },
)
async def compose_model(
    ref: str,
    request: Request,
    plane: PlaneDep,
    after: Annotated[
        list[str],
        Query(
            description="A tensor to insert the layer after; repeat for several "
            "(insertion i takes seed + i). None: after the model's only output.",
            examples=[["/layer1/layer1.1/relu_1/Relu_output_0", "logits"]],
        ),
    ] = [],  # noqa: B006 (FastAPI copies a Query default per request)
    seed: Annotated[
        Annotated[Seed, FROM_TEXT] | None,
        Query(description="User seed; default the layer's, else one drawn."),
    ] = None,
    mask: Annotated[Mask, Query()] = DEFAULT_MASK,
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    require_media_type(content_type, [ONNX_MEDIA_TYPE])
    check_acceptable(accept, ONNX_MEDIA_TYPE)
    body = await request.body()
    model, used = await plane.compose(ref, body, after=after, seed=seed, mask=mask)
    return Response(model, media_type=ONNX_MEDIA_TYPE, headers={"X-Seed": str(used)})

"""The OpenAPI document the app serves, and its YAML form committed as ``openapi.yaml``."""

from __future__ import annotations

from typing import Any, Literal

import yaml
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from service import __version__
from service.api import auth
from service.api.apply_models import ApplyRequest, ApplyResponse
from service.api.problems import Problem, V2Error, error_document, error_media_type
from service.codecs.v2 import V2InferRequest, V2InferResponse

#: Types that raw routes reference by $ref: FastAPI cannot see them (the bodies are read by
#: the endpoints, with these very types).
_EXTRA_SCHEMAS: tuple[tuple[type[Any], Literal["validation", "serialization"]], ...] = (
    (ApplyRequest, "validation"),
    (ApplyResponse, "serialization"),
    (Problem, "serialization"),
    (V2Error, "serialization"),
    (V2InferRequest, "validation"),
    (V2InferResponse, "serialization"),
)

DESCRIPTION = """\
Keras-style dropout (`Dropout`, `SpatialDropout1D/2D/3D`) as a service. Layers are stored
specs; `/apply` runs one on a tensor, in inference mode (the input, unchanged) or training
mode (whole feature maps dropped, kept values scaled by 1/(1-rate)). Masks are a pure
function of (seed, sample, channel, rate) and equal onnxruntime's Dropout stream.
Errors are RFC 9457 problem documents with a stable `code`.
"""


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the schemas of hand-read bodies; cached on the app."""
    if app.openapi_schema is None:
        doc = get_openapi(
            title="Spatial dropout service",
            version=__version__,
            description=DESCRIPTION,
            routes=app.routes,
        )
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for model, mode in _EXTRA_SCHEMAS:
            schema = TypeAdapter(model).json_schema(
                ref_template="#/components/schemas/{model}", mode=mode
            )
            for name, sub in schema.pop("$defs", {}).items():
                schemas.setdefault(name, sub)
            schemas[model.__name__] = schema
        _problems_for_validation(doc)
        auth.document(doc)
        app.openapi_schema = doc
    return app.openapi_schema


def to_yaml(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


def _problems_for_validation(doc: dict[str, Any]) -> None:
    """FastAPI documents its own 422 body; ours is the path's error document, so say that."""
    for path, item in doc["paths"].items():
        v2 = path.startswith("/v2")
        schema = {"$ref": "#/components/schemas/" + ("V2Error" if v2 else "Problem")}
        example = error_document(path, *_VALIDATION_EXAMPLE[:4], errors=_VALIDATION_EXAMPLE[4])
        for operation in item.values():
            response = operation.get("responses", {}).get("422")
            if response is None:
                continue
            content = response.setdefault("content", {})
            fastapi_default = content.pop("application/json", None)
            if fastapi_default is not None or not content:
                content.setdefault(error_media_type(path), {"schema": schema, "example": example})
            if response.get("description") == "Validation Error":
                response["description"] = "Invalid request"
    schemas = doc["components"]["schemas"]
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)


_VALIDATION_EXAMPLE: tuple[int, str, str, str, list[dict[str, Any]]] = (
    422,
    "validation_error",
    "Invalid request",
    "limit: Input should be greater than or equal to 1",
    [
        {
            "loc": ["query", "limit"],
            "msg": "Input should be greater than or equal to 1",
            "type": "greater_than_equal",
        }
    ],
)

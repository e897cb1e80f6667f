"""OpenAPI helpers shared by the routes: problem responses with examples."""

from __future__ import annotations

from typing import Any

from service import errors
from service.api.problems import PROBLEM_MEDIA_TYPE, problem

_EXAMPLES: dict[type[errors.ServiceError], str] = {
    errors.LayerNotFound: "No layer has the id or name 'sd'.",
    errors.NameConflict: "A layer named 'sd' already exists; names are unique.",
    errors.InvalidRate: "Invalid value received for argument `rate`. Expected a float value "
    "between 0 and 1. Received: rate=1.5",
    errors.RankMismatch: 'Input 0 of layer "sd" is incompatible with the layer: expected '
    "ndim=4, found ndim=3. Full shape received: (2, 3, 4)",
    errors.RequestValidation: "rate: Field required",
    errors.UnsupportedMediaType: "Content-Type 'text/plain' is not accepted here; "
    "send one of: application/json.",
    errors.NotAcceptable: "Accept 'text/html' admits none of the media types this request "
    "can answer with: application/json.",
    errors.BodyTooLarge: "The request body exceeds the limit of 268435456 bytes.",
    errors.InvalidJson: "The body is not valid JSON: unexpected character: line 1 column 2.",
    errors.StoreUnavailable: "The layer store did not answer; nothing was written.",
    errors.InvalidCursor: "Invalid cursor 'abc': pass back the next_cursor of a page.",
}


def problems(*error_types: type[errors.ServiceError]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these errors, grouped by status, each with an example."""
    out: dict[int | str, dict[str, Any]] = {}
    for err in error_types:
        entry = out.setdefault(
            err.status,
            {
                "description": err.title,
                "content": {
                    PROBLEM_MEDIA_TYPE: {
                        "schema": {"$ref": "#/components/schemas/Problem"},
                        "examples": {},
                    }
                },
            },
        )
        if entry["description"] != err.title:
            entry["description"] += f"; {err.title}"
        entry["content"][PROBLEM_MEDIA_TYPE]["examples"][err.code] = {
            "value": problem(err.status, err.code, err.title, _EXAMPLES.get(err, err.title + "."))
        }
    return out

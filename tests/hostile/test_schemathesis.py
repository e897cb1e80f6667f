"""Schemathesis against the document the server serves (``/openapi.json``), on a real server.

Every operation gets its examples, schemathesis's coverage cases and a bounded number of
generated ones, positive and negative, with a fixed seed and derandomized generation (the
same requests on every run). Every check runs: no 5xx, every status, content type, header and
body as documented, invalid data refused, schema-valid data accepted, and a request timeout so
that a hang fails too.

A schema-valid request may be refused only for one of the reasons in ``BEYOND_SCHEMA``: rules
JSON Schema cannot state. Each is recognised by the operation and the refusal's stable code,
and every other check still runs on such a request.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any, Final

import httpx
import numpy as np
import pytest
import schemathesis
from schemathesis import Case, CheckContext, Response
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import SchemathesisConfig

from service.api.app import create_app
from service.settings import Settings
from tests.conftest import Server

#: Examples generated per operation (on top of its explicit examples and coverage cases).
EXAMPLES: Final = 25
CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 20261127,
        "generation": {
            "mode": "all",
            "max-examples": EXAMPLES,
            "deterministic": True,
            "database": "none",
        },
        "request-timeout": 20,
    }
)

_APPLY: Final = "POST /apply"
_INFER: Final = frozenset(
    {"POST /v2/models/{name}/infer", "POST /v2/models/{name}/versions/{version}/infer"}
)
#: What a tensor is checked against beyond its own schema (codes of /apply and the export).
_FITS: Final = frozenset(
    {
        "rank_mismatch",
        "batch_size_mismatch",
        "invalid_noise_shape",
        "shape_mismatch",
        "ragged_tensor",
        "invalid_shape",
        "value_out_of_range",
        "tensor_too_large",
        "body_too_large",
        "seed_required",  # an export of a layer stored without a seed
        "validation_error",  # an export's rank; a nested-list dtype against the flat form's
    }
)


def _npy_parameters(case: Case[Any], code: str | None) -> bool:
    if case.operation.label != _APPLY or code != "validation_error":
        return False
    if case.media_type == "application/json":
        return bool(case.query)
    return not (case.query or {}).get("layer")


#: What a model body is checked against: being an ONNX model onnxruntime loads.
_MODEL_BODY: Final = frozenset(
    {"invalid_model", "external_data", "model_not_loadable", "too_many_nodes", "unsupported_opset"}
)


def _tensor_fits(case: Case[Any], code: str | None) -> bool:
    if case.operation.label == "PUT /models/{name}":
        return code in _MODEL_BODY
    if case.operation.label in _INFER:
        return code is None  # the protocol's {"error": ...}: its statuses are checked below
    return case.operation.label in (_APPLY, "GET /layers/{ref}/onnx") and code in _FITS


def _name_rules(case: Case[Any], code: str | None) -> bool:
    labels = ("POST /layers", _APPLY, "PUT /models/{name}")
    return case.operation.label in labels and code == "invalid_name"


#: Why a schema-valid request may still be refused; nothing else may refuse one.
BEYOND_SCHEMA: Final[dict[str, tuple[str, Callable[[Case[Any], str | None], bool]]]] = {
    "parameters of one media type": (
        "/apply's query parameters belong to its .npy form (which needs `layer`), its body "
        "fields to the JSON form; OpenAPI cannot tie a parameter to one media type.",
        _npy_parameters,
    ),
    "a tensor fits its layer": (
        "A model body must be an ONNX model onnxruntime loads; a tensor's rank, shape and "
        "values (and an export's rank and seed) must fit its layer "
        "(stored, so not in the schema), its dtype and the server's limits, and its data must "
        "match its declared "
        "shape, or binary_data_size and Inference-Header-Content-Length the bytes that follow "
        "(arithmetic across fields and bytes, which JSON Schema cannot state).",
        _tensor_fits,
    ),
    "a layer name's characters": (
        "A name may hold no control or format characters and may not look like an id: Unicode "
        "categories, which a JSON Schema pattern (ECMA 262) has no portable way to name.",
        _name_rules,
    ),
}


@schemathesis.serializer("application/x-npy")
def _npy(_ctx: Any, value: object) -> bytes:
    """A generated binary string as a real .npy (float32, rank 4): so that schema-valid
    requests reach the kernel. Anything else (negative cases) goes as its text."""
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        return repr(value).encode()
    raw = value + bytes(-len(value) % 4)
    buffer = io.BytesIO()
    np.save(buffer, np.frombuffer(raw, dtype="<f4").reshape(1, 1, 1, -1))
    return buffer.getvalue()


def accepted_unless_beyond_schema(ctx: CheckContext, response: Response, case: Case[Any]) -> None:
    """positive_data_acceptance, but for a refusal that a reason of BEYOND_SCHEMA explains."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code < 400:
        return
    if response.status_code in (401, 403, 404, 409):
        return  # as positive_data_acceptance: a missing resource or a taken name
    answer = response.json()
    assert isinstance(answer, dict), answer
    code = answer.get("code")
    if case.operation.path.startswith("/v2/"):
        assert set(answer) == {"error"} and response.status_code in (400, 413, 422), answer
    reasons = [name for name, (_why, applies) in BEYOND_SCHEMA.items() if applies(case, code)]
    assert reasons, f"a schema-valid request was refused: {response.status_code} {answer}"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own (schemathesis creates and deletes layers), holding the layer the
    spec's examples name."""
    server = Server(
        tmp_path_factory.mktemp("schemathesis") / "layers.sqlite3",
        env={
            "SPATIAL_DROPOUT_MAX_BODY_BYTES": str(8 * 1024 * 1024),
            "SPATIAL_DROPOUT_MAX_TENSOR_ELEMENTS": str(1024 * 1024),
        },
    ).start()
    httpx.post(
        f"{server.url}/layers", json={"name": "sd", "rate": 0.5, "seed": 7}
    ).raise_for_status()
    yield server
    server.stop()


#: The document as the app serves it at /openapi.json (fetched through ASGI at collection,
#: since the cases must exist before the server starts; the next test checks the running
#: server serves the same): the contract is what answers, not a file.
schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    create_app(Settings(database_url="sqlite:///:memory:")),
    config=CONFIG,
)


@schema.parametrize()
def test_the_api_keeps_its_contract(case: Case[Any], target: Server) -> None:
    case.call_and_validate(
        base_url=target.url,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[accepted_unless_beyond_schema],
    )


def test_the_cases_come_from_the_document_the_server_serves(target: Server) -> None:
    assert httpx.get(f"{target.url}/openapi.json").json() == schema.raw_schema


def test_at_most_three_rules_are_beyond_the_schema() -> None:
    assert len(BEYOND_SCHEMA) <= 3
    assert all(why for why, _applies in BEYOND_SCHEMA.values())


# -- what schemathesis found, pinned -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/layers", "GET, POST"),
        ("OPTIONS", "/layers", "GET, POST"),
        ("PATCH", "/layers/sd", "DELETE, GET"),
        ("GET", "/apply", "POST"),
        ("DELETE", "/v2/models/sd/infer", "POST"),
    ],
)
def test_405_allow_names_every_method_of_the_resource(
    target: Server, method: str, path: str, allow: str
) -> None:
    # Starlette named only the first matching route's methods (PUT /layers: "Allow: POST").
    response = httpx.request(method, f"{target.url}{path}")
    assert response.status_code == 405
    assert response.headers["allow"] == allow


def test_the_documented_cursor_format_is_what_the_store_takes(target: Server) -> None:
    parameters = schema.raw_schema["paths"]["/layers"]["get"]["parameters"]
    (cursor,) = (p["schema"] for p in parameters if p["name"] == "cursor")
    assert cursor["pattern"] == "^[0-9]{1,18}$"
    for good in ("0", "000000000000000000", "999999999999999999"):
        assert httpx.get(f"{target.url}/layers", params={"cursor": good}).status_code == 200
    for bad in ("abc", "-1", "1" * 19, "\u0661"):
        response = httpx.get(f"{target.url}/layers", params={"cursor": bad})
        assert response.status_code == 422 and response.json()["code"] == "invalid_cursor"

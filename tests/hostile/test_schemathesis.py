"""Schemathesis against the app's own ``openapi.yaml``, on a real server on 127.0.0.1.

Every operation gets its examples, schemathesis's coverage cases and a bounded number of
generated ones, positive and negative, with a fixed seed and derandomized generation (the
same requests on every run). Every check runs: no 5xx, every status, content type, header and
body as documented, invalid data refused, and a request timeout so that a hang fails too.

Where a request's validity is more than JSON Schema can say, one check is adapted, not skipped:

* ``/apply``'s JSON form refuses the ``.npy`` form's query parameters (each documented as
  ".npy form only"); OpenAPI cannot tie a parameter to one media type. Such requests must be
  refused with a 4xx, and all other checks still run.
* A layer spec, a tensor and an infer request have rules across fields (Keras's checks, rank,
  shape against data, binary framing), and a ``.npy`` body is "a binary string" to the schema.
  For those operations a schema-valid request may be refused, but only with a documented 4xx
  problem carrying one of the service's stable codes: never a 5xx, never an undocumented
  answer.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, Final

import httpx
import numpy as np
import pytest
import schemathesis
from schemathesis import Case, CheckContext, Response
from schemathesis.checks import positive_data_acceptance
from schemathesis.config import SchemathesisConfig

from service import errors
from tests.conftest import ROOT, Server

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
schema = schemathesis.openapi.from_path(ROOT / "openapi.yaml", config=CONFIG)

#: Operations whose validity has rules across fields that JSON Schema does not express.
SEMANTIC: Final = frozenset(
    {
        "POST /layers",
        "POST /apply",
        "GET /layers/{ref}/onnx",
        "POST /v2/models/{name}/infer",
        "POST /v2/models/{name}/versions/{version}/infer",
    }
)
#: Every code the service answers with (its errors, and the framework's statuses).
CODES: Final = frozenset(
    cls.code
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.ServiceError)
) | {"not_found", "method_not_allowed", "bad_request"}


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


def refused_only_with_a_stable_code(ctx: CheckContext, response: Response, case: Case[Any]) -> None:
    """A schema-valid request refused for a rule beyond the schema: a documented 4xx, with a
    code the service defines (or, under /v2, the protocol's ``{"error": ...}``)."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code < 400:
        return
    assert response.status_code < 500, response.text
    answer = response.json()
    assert isinstance(answer, dict), answer
    if case.operation.path.startswith("/v2/"):
        assert set(answer) == {"error"} and response.status_code in (400, 404, 413, 422), answer
    else:
        assert answer.get("code") in CODES, answer
        assert answer["code"] != "internal_error"


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


@schema.parametrize()
def test_the_api_keeps_its_contract(case: Case[Any], target: Server) -> None:
    if (
        case.method == "POST"
        and case.operation.path == "/apply"
        and case.media_type == "application/json"
        and case.query
    ):
        response = case.call(base_url=target.url)
        assert 400 <= response.status_code < 500, response.text
        case.validate_response(response, excluded_checks=[positive_data_acceptance])
    elif case.operation.label in SEMANTIC:
        case.call_and_validate(
            base_url=target.url,
            excluded_checks=[positive_data_acceptance],
            additional_checks=[refused_only_with_a_stable_code],
        )
    else:
        case.call_and_validate(base_url=target.url)


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

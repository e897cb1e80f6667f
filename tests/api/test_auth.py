"""Optional bearer tokens: writes need one (reads too with AUTH_READS); probes stay open."""

from __future__ import annotations

import hmac
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from service.api.auth import TokenCheck
from tests.api.helpers import assert_problem, npy, unique
from tests.conftest import Server, serving
from tests.hostile.wire import exchange, http_request

TOKENS = ("tok-alpha", "tok-beta-longer")
CONFIGURED = f" {TOKENS[0]} ,{TOKENS[1]},"  # spaces and an empty entry, which are ignored
GOOD = {"Authorization": f"Bearer {TOKENS[1]}"}
INFER = {"inputs": [{"name": "input", "shape": [1, 1, 1, 2], "datatype": "FP32", "data": [1, 2]}]}


@pytest.fixture(scope="module")
def writes_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(tmp_path_factory, "auth-writes", api_tokens=CONFIGURED, auth_reads="false")


@pytest.fixture(scope="module")
def reads_too(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(tmp_path_factory, "auth-reads", api_tokens=CONFIGURED, auth_reads="true")


def _layer(server: Server) -> str:
    name = unique()
    made = httpx.post(f"{server.url}/layers", json={"name": name, "rate": 0.5}, headers=GOOD)
    assert made.status_code == 201, made.text
    return name


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/layers", {"rate": 0.5}),
        ("DELETE", "/layers/{name}", None),
        ("POST", "/apply", {"layer": "{name}", "input": [[[[1.0]]]]}),
    ],
)
def test_writes_need_a_token(writes_only: Server, method: str, path: str, body: object) -> None:
    name = _layer(writes_only)
    url = writes_only.url + path.format(name=name)
    if isinstance(body, dict) and body.get("layer"):
        body = {**body, "layer": name}

    missing = httpx.request(method, url, json=body)
    assert_problem(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")

    wrong = httpx.request(method, url, json=body, headers={"Authorization": "Bearer tok-alph"})
    assert_problem(wrong, 403, "forbidden")

    for token in TOKENS:  # every configured token is accepted
        ok = httpx.request(method, url, json=body, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code in {200, 201, 204}, ok.text
        if method == "DELETE":
            break


@pytest.mark.parametrize(
    "header", ["Basic dG9rLWFscGhhOg==", "Bearer", "Token tok-alpha", "tok-alpha", "bearer"]
)
def test_a_malformed_header_is_401(writes_only: Server, header: str) -> None:
    response = httpx.post(
        f"{writes_only.url}/layers", json={"rate": 0.5}, headers={"Authorization": header}
    )
    assert_problem(response, 401, "unauthorized")
    assert 'error="invalid_request"' in response.headers["www-authenticate"]


def test_the_scheme_is_case_insensitive(writes_only: Server) -> None:
    response = httpx.post(
        f"{writes_only.url}/layers",
        json={"rate": 0.5, "name": unique()},
        headers={"Authorization": f"bEaReR {TOKENS[0]}"},
    )
    assert response.status_code == 201


def test_v2_infer_needs_a_token_and_answers_in_v2_form(writes_only: Server) -> None:
    name = _layer(writes_only)
    url = f"{writes_only.url}/v2/models/{name}/infer"
    missing = httpx.post(url, json=INFER)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert list(missing.json()) == ["error"]
    wrong = httpx.post(url, json=INFER, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and list(wrong.json()) == ["error"]
    assert httpx.post(url, json=INFER, headers=GOOD).status_code == 200


def test_reads_stay_open_unless_asked(writes_only: Server) -> None:
    name = _layer(writes_only)
    for path in ("/layers", f"/layers/{name}", f"/layers/{name}/keras", f"/v2/models/{name}"):
        assert httpx.get(writes_only.url + path).status_code == 200, path


def test_auth_reads_guards_reads(reads_too: Server) -> None:
    name = _layer(reads_too)
    for path in ("/layers", f"/layers/{name}", "/v2", f"/v2/models/{name}"):
        response = httpx.get(reads_too.url + path)
        assert response.status_code == 401, path
        assert httpx.get(reads_too.url + path, headers=GOOD).status_code == 200, path
        wrong = httpx.get(reads_too.url + path, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 403, path


@pytest.mark.parametrize(
    "path",
    ["/healthz", "/readyz", "/metrics", "/openapi.json", "/v2/health/live", "/v2/health/ready"],
)
def test_probes_metrics_and_the_document_stay_open(reads_too: Server, path: str) -> None:
    assert httpx.get(reads_too.url + path).status_code == 200


def test_a_refused_upload_is_not_read(writes_only: Server) -> None:
    """The refusal comes before the body: headers announcing 4 MiB, and not one byte of it
    sent, get the 401; a server that read the body first would still be waiting for it."""
    head = http_request(
        "POST",
        "/apply?layer=x",
        {"Content-Type": "application/x-npy"},
        content_length=4 * 1024 * 1024,
    )
    response = exchange(writes_only.port, head, timeout=10)
    assert response.status == 401, response
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unauthorized"


def test_a_small_tensor_for_a_layer_in_memory_still_needs_a_token(writes_only: Server) -> None:
    """The kind of request the protocol answers itself when no token is configured
    (service.api.inline): a whole small .npy body, its layer just read by an allowed call."""
    name = _layer(writes_only)
    body = npy(np.ones((1, 2, 2, 3), np.float32))
    url = f"{writes_only.url}/apply?layer={name}"
    npy_type = {"Content-Type": "application/x-npy"}
    assert httpx.post(url, content=body, headers={**npy_type, **GOOD}).status_code == 200
    head = http_request("POST", f"/apply?layer={name}", npy_type, content_length=len(body))
    response = exchange(writes_only.port, head + body)
    assert response.status == 401, response
    assert response.json()["code"] == "unauthorized"


def test_every_token_is_compared_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("service.api.auth.hmac.compare_digest", counting)
    auth = TokenCheck(["first", "second", "third"])
    assert auth._known(b"first")  # matches the first one, and still compares all three
    assert len(calls) == 3
    assert not auth._known(b"fourth")
    assert len(calls) == 6
    assert all(len(a) == len(b) == 32 for a, b in calls)  # digests: no length to leak

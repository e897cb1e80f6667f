"""Small helpers for the end-to-end tests."""

from __future__ import annotations

import io
import uuid
from typing import Any

import httpx
import numpy as np


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create(client: httpx.Client, **spec: Any) -> dict[str, Any]:
    spec.setdefault("name", unique())
    spec.setdefault("rate", 0.5)
    response = client.post("/layers", json=spec)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The answer is an RFC 9457 problem with this status and stable code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"] == f"urn:spatial-dropout:problem:{code}"
    assert body["title"] and body["detail"]
    return body


def npy(array: np.ndarray) -> bytes:
    """``array`` as a .npy file, as numpy.save writes it."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def load(content: bytes) -> np.ndarray:
    """The array in a .npy answer."""
    return np.load(io.BytesIO(content))


def fp32_input(x: np.ndarray) -> dict[str, Any]:
    """``x`` as the Open Inference Protocol input tensor "input": FP32, its data flat."""
    return {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}

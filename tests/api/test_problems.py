"""The error mapping itself: a bug becomes a bare 500 that leaks nothing; others keep codes."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from service.errors import LayerNotFound
from service.settings import Settings


def _call(app: object, method: str, url: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await c.request(method, url)

    return asyncio.run(go())


def test_an_unexpected_error_is_a_500_without_internals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/p.sqlite3"))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret connection string postgres://user:pw@db")

    @app.get("/missing")
    def missing() -> None:
        raise LayerNotFound("x")

    with caplog.at_level(logging.ERROR, logger="service.errors"):
        response = _call(app, "GET", "/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "internal_error"
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert "secret connection string" in caplog.text  # operators still see the cause

    response = _call(app, "GET", "/missing")
    assert (response.status_code, response.json()["code"]) == (404, "layer_not_found")

"""An app served in this process, lifespan included, for tests that read its logs as they happen.

Starlette's TestClient wants ``httpx2``; httpx's ASGI transport does the same job, and each
call returns only once the app (middleware included) has finished with the request.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

import httpx
from fastapi import FastAPI


class InProcess:
    def __init__(self, app: FastAPI, root_path: str = "") -> None:
        """``root_path`` is the prefix a proxy in front strips (ASGI's ``root_path``)."""
        self.app = app
        self._runner = asyncio.Runner()
        self._lifespan: AbstractAsyncContextManager[Any] = app.router.lifespan_context(app)
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False, root_path=root_path),
            base_url="http://127.0.0.1",
        )

    def __enter__(self) -> InProcess:
        self._runner.run(self._lifespan.__aenter__())
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._runner.run(self._client.aclose())
            self._runner.run(self._lifespan.__aexit__(kind, exc, tb))
        finally:
            self._runner.close()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._runner.run(self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

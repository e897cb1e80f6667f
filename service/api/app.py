"""The app factory: every test and every server process builds its own app from Settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from service import __version__
from service.api import problems
from service.api.limits import BodyLimitMiddleware
from service.api.openapi import DESCRIPTION, build_openapi
from service.api.routes import apply, health, layers, onnx, v2
from service.onnx.engine import OnnxEngine
from service.settings import Settings
from service.store import open_store


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app; the store opens when it starts serving and closes when it stops."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.store = open_store(settings.database_url)
        app.state.onnx_engine = OnnxEngine()
        try:
            yield
        finally:
            app.state.onnx_engine.close()
            app.state.store.close()

    app = FastAPI(
        title="Spatial dropout service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    problems.install(app)
    app.include_router(layers.router)
    app.include_router(apply.router)
    app.include_router(onnx.router)
    app.include_router(health.router)
    app.include_router(v2.router)
    app.openapi = partial(build_openapi, app)  # type: ignore[method-assign]
    return app

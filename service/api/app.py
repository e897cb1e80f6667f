"""The app factory: every test and every server process builds its own app from Settings."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from service import __version__
from service.api import docpages, inline, logs, problems
from service.api.auth import BearerAuth
from service.api.budget import BodyBudget
from service.api.head_method import HeadAsGet
from service.api.limits import BodyLimitMiddleware
from service.api.metrics import Metrics
from service.api.observe import ServiceApp
from service.api.openapi import DESCRIPTION, build_openapi
from service.api.routes import apply, health, layers, metrics, onnx, v2
from service.api.routes.compose import router as compose_router
from service.api.routes.models import router as models_router
from service.api.routing import HotRoutes
from service.dataplane import DataPlane
from service.drain import Drain
from service.settings import Settings


def create_app(settings: Settings | None = None, *, grpc: bool = False) -> FastAPI:
    """A new app; the store opens when it starts serving and closes when it stops. With
    ``grpc`` (and a GRPC_PORT), the gRPC server runs beside it on the same data plane."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.plane = DataPlane.open(settings)
        server = None
        try:
            if grpc and settings.grpc_port:
                from service.grpc.server import start_server

                server = await start_server(
                    app.state.plane, app.state.metrics, settings, app.state.drain
                )
            if grpc:  # the served app: SIGTERM drains first
                app.state.drain.install()
            # What startup made (modules, schemas, sessions) lives as long as the process: out
            # of the collector's sight, a full collection no longer walks it, and no longer
            # stalls every request in flight for tens of milliseconds.
            gc.freeze()
            inline.install(app, inline_routes)
            yield
        finally:
            inline.uninstall()
            if server is not None:
                # HTTP has drained by now (uvicorn waits for it before the lifespan ends);
                # gRPC takes no new call, and the calls in flight get the same grace.
                await server.stop(settings.graceful_shutdown_seconds)
            app.state.plane.close()
            app.state.metrics.close()

    app = ServiceApp(
        title="Spatial dropout service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # RequestTelemetry measures and logs every request; FastAPI's own OpenTelemetry
        # hooks would only ask, per request, whether a provider was configured.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url=None,  # service.api.docpages serves these, with assets of its own
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.drain = Drain(settings.drain_seconds)
    hot = [*apply.ROUTES, *v2.INFER_ROUTES]
    inline_routes = [
        inline.Route(method, route.path, route.path_regex, route.inline)
        for route in hot
        if route.inline is not None
        for method in route.methods or ()
    ]
    app.add_middleware(HotRoutes, routes=hot)  # innermost: under the limits and auth
    app.add_middleware(HeadAsGet)  # logs, metrics and auth see the HEAD
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout=settings.body_timeout_seconds,
        budget=BodyBudget(settings.max_pending_body_bytes),
    )
    if settings.tokens():  # added last, so it runs first: no body is read for a refusal
        app.add_middleware(BearerAuth, tokens=settings.tokens(), reads=settings.auth_reads)
    problems.install(app)
    app.router.routes[:0] = hot  # first in the document, as they are first in HotRoutes
    app.include_router(layers.router)
    app.include_router(onnx.router)
    app.include_router(compose_router)
    app.include_router(models_router)
    app.include_router(health.router)
    app.include_router(v2.router)
    app.include_router(metrics.router)
    app.include_router(docpages.router(app))
    app.openapi = partial(build_openapi, app)  # type: ignore[method-assign]
    return app


def create_served_app() -> FastAPI:
    """``spatial-dropout serve``'s app, in each worker process: settings from the
    environment, gRPC beside HTTP."""
    logs.lean_records()
    return create_app(Settings(), grpc=True)

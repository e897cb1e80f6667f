"""GET /metrics: Prometheus exposition text (kept out of the OpenAPI document: not an API)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.deps import StoreDep
from service.api.metrics import MEDIA_TYPE, Metrics

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, store: StoreDep) -> Response:
    # A plain def: FastAPI runs it in a worker thread, where counting the store may block.
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(store), media_type=MEDIA_TYPE)

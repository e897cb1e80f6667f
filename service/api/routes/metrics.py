"""GET /metrics: Prometheus exposition text (kept out of the OpenAPI document: not an API)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.deps import StoreDep, metrics_of
from service.api.metrics import MEDIA_TYPE

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, store: StoreDep) -> Response:
    # A plain def: FastAPI runs it in a worker thread, where counting the store may block.
    return Response(metrics_of(request).render(store), media_type=MEDIA_TYPE)

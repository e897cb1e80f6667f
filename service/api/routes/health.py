"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service import errors
from service.api.deps import StoreDep
from service.api.docs import problems

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    summary="Liveness: the process answers",
    responses={
        200: {
            "description": "Alive",
            "content": {"application/json": {"example": {"status": "ok"}}},
        }
    },
)
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the layer store answers, and the replica is not stopping",
    responses={
        200: {
            "description": "Ready",
            "content": {"application/json": {"example": {"status": "ready", "layers": 3}}},
        },
        **problems(errors.StoreUnavailable, errors.Draining),
    },
)
def readyz(request: Request, store: StoreDep) -> dict[str, Any]:
    drain = request.app.state.drain
    if drain.draining:
        raise errors.Draining(drain.seconds)
    try:
        store.ping()
        count = store.count()
    except errors.StoreUnavailable as exc:
        raise errors.StoreUnavailable(f"Not ready: {exc.reason}.", reason=exc.reason) from None
    return {"status": "ready", "layers": count}

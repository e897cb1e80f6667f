"""What routes take from the app, in one place: the ``Annotated`` dependencies FastAPI routes
declare, and the plain accessors the raw endpoints (service.api.routing) call."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request

from service.api.metrics import Metrics
from service.api.negotiation import check_acceptable, require_media_type
from service.dataplane import DataPlane
from service.settings import Settings
from service.store import LayerStore

JSON: str = "application/json"

# Every dependency is ``async def``: FastAPI runs a plain ``def`` dependency in a worker
# thread, a hop that costs more than these one-liners.


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def plane_of(request: Request) -> DataPlane:
    """The app's data plane (opened in its lifespan)."""
    plane: DataPlane = request.app.state.plane
    return plane


def store_of(request: Request) -> LayerStore:
    return plane_of(request).store


def metrics_of(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_settings(request: Request) -> Settings:
    return settings_of(request)


async def get_store(request: Request) -> LayerStore:
    return store_of(request)


async def get_plane(request: Request) -> DataPlane:
    return plane_of(request)


async def accepts_json(
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """406 unless the client takes JSON answers."""
    check_acceptable(accept, JSON)


async def sends_json(
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """415 unless the body is JSON."""
    require_media_type(content_type, [JSON])


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[LayerStore, Depends(get_store)]
PlaneDep = Annotated[DataPlane, Depends(get_plane)]
AcceptsJson = Depends(accepts_json)
SendsJson = Depends(sends_json)

#: The page size and the cursor of a listing (``GET /layers``, ``GET /models``).
PageLimit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
PageCursor = Annotated[
    str | None,
    Query(
        max_length=32,
        description="next_cursor of the previous page.",
        # Documented, not enforced here: the store refuses other cursors as invalid_cursor,
        # a code of their own, rather than as a generic validation_error.
        json_schema_extra={"pattern": "^[0-9]{1,18}$"},
    ),
]

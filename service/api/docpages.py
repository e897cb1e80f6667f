"""/docs (Swagger UI), /redoc and /openapi.json, with every asset served by the service itself.

FastAPI's own pages load Swagger UI and ReDoc from a CDN and a favicon from a web site, so
on a machine without internet they stay blank. The assets come from the ``fastapi-offline``
distribution (a runtime dependency, so they are installed wherever the wheel is), served
under ``/docs/assets/`` by name from a fixed table: no request chooses which file is read.
The routes are FastAPI routes, so metrics and logs label them by their path.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

OPENAPI_PATH: Final = "/openapi.json"
DOCS_PATH: Final = "/docs"
REDOC_PATH: Final = "/redoc"
ASSETS_PATH: Final = "/docs/assets"
#: The assets a page may ask for, by the name in its URL, and their media types.
ASSETS: Final = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
#: Swagger UI would send the document to an online validator and show its badge.
_SWAGGER_PARAMETERS: Final = {"validatorUrl": None}
#: The pages may load nothing from elsewhere. ReDoc's menu shows a logo from its makers' CDN,
#: unconditionally; this keeps the browser from asking for it (the menu just shows no logo).
#: Inline code is FastAPI's own page template (Swagger UI's start call, ReDoc's styles), and
#: ReDoc runs its search in a worker made from a blob.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


def asset_dir() -> Path:
    """Where the installed ``fastapi-offline`` keeps the assets."""
    return Path(str(files("fastapi_offline") / "static"))


def router(app: FastAPI) -> APIRouter:
    """The document and the two pages of ``app`` (built with docs_url, redoc_url and
    openapi_url None, so FastAPI adds none of its own)."""
    pages = APIRouter(include_in_schema=False)
    directory = asset_dir()

    @pages.get(OPENAPI_PATH)
    async def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    @pages.get(DOCS_PATH)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return _local_page(
            request,
            get_swagger_ui_html,
            f"{app.title} - Swagger UI",
            {
                "swagger_js_url": "swagger-ui-bundle.js",
                "swagger_css_url": "swagger-ui.css",
                "swagger_favicon_url": "favicon.png",
            },
            swagger_ui_parameters=_SWAGGER_PARAMETERS,
        )

    @pages.get(REDOC_PATH)
    async def redoc(request: Request) -> HTMLResponse:
        return _local_page(
            request,
            get_redoc_html,
            f"{app.title} - ReDoc",
            {"redoc_js_url": "redoc.standalone.js", "redoc_favicon_url": "favicon.png"},
            with_google_fonts=False,
        )

    @pages.get(ASSETS_PATH + "/{name}")
    async def asset(name: str) -> FileResponse:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise HTTPException(404)  # answered as the problem `not_found`
        return FileResponse(directory / name, media_type=media_type)

    return pages


def _local_page(
    request: Request,
    build: Callable[..., HTMLResponse],
    title: str,
    assets: dict[str, str],
    **options: Any,
) -> HTMLResponse:
    """The page ``build`` (FastAPI's Swagger UI or ReDoc page) makes, pointed at this service's
    document and at ``assets`` (keyword -> name under ASSETS_PATH), below the app's root path
    (behind a proxy that strips a prefix), and allowed to load nothing from elsewhere."""
    root = request.scope.get("root_path", "").rstrip("/")
    urls = {keyword: f"{root}{ASSETS_PATH}/{name}" for keyword, name in assets.items()}
    page = build(openapi_url=root + OPENAPI_PATH, title=title, **urls, **options)
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page

"""HEAD wherever GET is served (RFC 9110): the GET answer's status and headers, no body."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HeadAsGet:
    """Route HEAD as GET, in front of the routes; outer layers (telemetry, auth) see HEAD.

    The body needs no dropping here: uvicorn reads the method from its own copy of the scope,
    still HEAD, and writes no body bytes for it, while the headers (Content-Length included)
    are the ones GET sends. A path without GET answers 405 as before.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)

"""The request body limit, enforced before the framework buffers anything."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import PROBLEM_MEDIA_TYPE, is_v2, problem_body, v2_error_body
from service.errors import BodyTooLarge


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413.

    A declared ``Content-Length`` over the limit is refused before one byte of the body is
    read. A body that arrives without one (chunked), or with a lying one, is counted as it
    streams in and cut off at the limit: the app sees a disconnect, the client the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _send_413(send, scope["path"], self.max_bytes)
            return

        received = 0
        started = False
        answered = False

        async def limited_receive() -> Message:
            nonlocal received, answered
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if not started and not answered:
                        answered = True
                        await _send_413(send, scope["path"], self.max_bytes)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # we already answered 413; what the app says now goes nowhere
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _send_413(send: Send, path: str, limit: int) -> None:
    err = BodyTooLarge(limit)
    if is_v2(path):
        body, media_type = v2_error_body(err.detail), "application/json"
    else:
        body = problem_body(err.status, err.code, err.title, err.detail)
        media_type = PROBLEM_MEDIA_TYPE
    await send(
        {
            "type": "http.response.start",
            "status": err.status,
            "headers": [
                (b"content-type", media_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

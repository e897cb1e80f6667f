"""The request body's limits, in size and in time, enforced before the framework buffers it."""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import error_response
from service.errors import BodyTimeout, BodyTooLarge, ServiceError


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413, and bodies that stall with 408.

    A declared ``Content-Length`` over the limit is refused before one byte of the body is
    read. A body that arrives without one (chunked), or with a lying one, is counted as it
    streams in and cut off at the limit: the app sees a disconnect, the client the 413.
    While a body is still arriving, each piece must come within ``timeout`` seconds, so a
    client that trickles a body cannot hold a connection and its buffer for ever.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _refuse(scope, receive, send, BodyTooLarge(self.max_bytes))
            return

        received = 0
        started = False
        answered = False
        body_done = False

        async def refuse(err: ServiceError) -> Message:
            nonlocal answered
            if not started and not answered:
                answered = True
                await _refuse(scope, receive, send, err)
            return {"type": "http.disconnect"}

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body, receive() waits for a disconnect: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                return await refuse(BodyTimeout(self.timeout))
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    return await refuse(BodyTooLarge(self.max_bytes))
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # we already answered 413/408; what the app says now goes nowhere
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _refuse(scope: Scope, receive: Receive, send: Send, err: ServiceError) -> None:
    # The connection closes after the answer: the rest of the body is never read.
    response = error_response(scope["path"], err, headers={"Connection": "close"})
    await response(scope, receive, send)

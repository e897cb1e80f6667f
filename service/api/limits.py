"""The request body's limits, in size and in time, enforced before the framework buffers it."""

from __future__ import annotations

import asyncio
import math

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.budget import BodyBudget
from service.api.encoding import Inflater, inflater_for
from service.api.problems import error_response
from service.errors import BodyTimeout, BodyTooLarge, ServerBusy, ServiceError


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413, and bodies that stall with 408.

    A declared ``Content-Length`` over the limit is refused before one byte of the body is
    read. A body that arrives without one (chunked), or with a lying one, is counted as it
    streams in and cut off at the limit: the app sees a disconnect, the client the 413.
    While a body is still arriving, each piece must come within ``timeout`` seconds, so a
    client that trickles a body cannot hold a connection and its buffer for ever.

    A gzip or deflate body is inflated here as it arrives, for every route alike, and the
    limit counts the inflated bytes; any other ``Content-Encoding`` gets 415. The bytes of
    bodies still arriving count against ``budget``, shared by all requests: a piece that
    would overfill it gets 503 with Retry-After.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout: float = 30.0,
        budget: BodyBudget | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.budget = budget or BodyBudget(4 * max_bytes)
        # By then every body that was stalled when the budget filled has moved on or got 408.
        self.retry_after = math.ceil(timeout)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, encoding, framed = _framing(scope)
        if declared is not None and declared > self.max_bytes:
            await _refuse(scope, receive, send, BodyTooLarge(self.max_bytes))
            return
        inflater: Inflater | None = None
        if encoding is not None and framed:
            try:
                inflater = inflater_for(encoding, self.max_bytes)
            except ServiceError as err:
                await _refuse(scope, receive, send, err)
                return
            if inflater is not None:  # the route sees the identity body, of unknown length
                scope = {**scope, "headers": _without_encoding(scope["headers"])}

        budget = self.budget
        held = 0  # this request's part of the budget
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
            nonlocal received, body_done, held
            if body_done:  # after the body, receive() waits for a disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout(self.timeout):  # a timer, where wait_for makes a task
                    message = await receive()
            except TimeoutError:
                return await refuse(BodyTimeout(self.timeout))
            if message["type"] != "http.request":
                return message
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if inflater is not None:
                try:
                    body = inflater.feed(body, final=not more)
                except ServiceError as err:
                    return await refuse(err)
                message = {"type": "http.request", "body": body, "more_body": more}
            received += len(body)
            body_done = not more
            if received > self.max_bytes:
                return await refuse(BodyTooLarge(self.max_bytes))
            if more:  # a body in one piece (most) never touches the budget
                if not budget.take(len(body)):
                    return await refuse(ServerBusy(budget.capacity, self.retry_after))
                held += len(body)
            elif held:
                budget.give(held)
                held = 0
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # we already answered 413/408; what the app says now goes nowhere
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        finally:
            budget.give(held)


def _framing(scope: Scope) -> tuple[int | None, str | None, bool]:
    """The request's Content-Length, its Content-Encoding, and whether it has a body at all."""
    declared: int | None = None
    encoding: str | None = None
    chunked = False
    for key, value in scope["headers"]:
        if key == b"content-length":
            declared = int(value) if value.isdigit() else None
        elif key == b"content-encoding":  # several lines are one list (RFC 9110 5.3)
            text = value.decode("latin-1")
            encoding = text if encoding is None else f"{encoding}, {text}"
        elif key == b"transfer-encoding":
            chunked = True
    return declared, encoding, chunked or bool(declared)


def _without_encoding(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in headers if k not in (b"content-encoding", b"content-length")]


async def _refuse(scope: Scope, receive: Receive, send: Send, err: ServiceError) -> None:
    # The connection closes after the answer: the rest of the body is never read.
    response = error_response(scope["path"], err, headers={"Connection": "close"})
    await response(scope, receive, send)

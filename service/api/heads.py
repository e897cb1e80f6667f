"""Request heads (request line and headers), bounded in size and in time at the protocol.

uvicorn's httptools protocol buffers a head of any size and waits for it for ever: a 32 MiB
header is read whole, and a connection that stops half-way through its headers is held for
as long as the client likes. Neither reaches the app, so no middleware can help; this
subclass of the protocol counts the bytes that arrive while a head is open and arms a timer
when one starts. ``serve`` pins it as uvicorn's HTTP implementation (h11, the other one, is
slower and answers an oversized head with a bare 400).

The count is per network read: a head is refused at the first read that takes it past
``SPATIAL_DROPOUT_MAX_HEAD_BYTES``, so it costs at most that plus one read (256 KiB).
"""

from __future__ import annotations

import asyncio
from functools import cache
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api.problems import PROBLEM_MEDIA_TYPE, problem_body
from service.errors import HeadTimeout, HeadTooLarge, ServiceError
from service.settings import Settings


@cache
def head_limits() -> tuple[int, float]:
    """Most bytes and seconds a head may take, from this process's settings (read once)."""
    settings = Settings()
    timeout = min(settings.head_timeout_seconds, settings.body_timeout_seconds)
    return settings.max_head_bytes, timeout


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with 431 for a head over the limit and 408 for a slow one."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._max_head, self._head_timeout = head_limits()
        self._in_head = True  # a new connection waits for its first head
        self._began = False  # some of the head has been parsed
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False  # answered 431/408: the rest of what arrives is ignored
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        # A read that starts between two requests is not counted: where in it the next head
        # begins is unknown, and the next read is counted whole.
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self._max_head:
            self._refuse(HeadTooLarge(self._max_head))

    # The parser's callbacks: once refused, the rest of the read (a body, more requests) is
    # parsed still, but goes nowhere.

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._in_head = self._began = True
        self._arm()

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._refused:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = self._began = False
        self._head_bytes = 0
        self._disarm()
        # The exact size, for a head that came in one read: the target and the header lines.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self._max_head:
            self._refuse(HeadTooLarge(self._max_head))
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self._head_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _timed_out(self) -> None:
        self._head_timer = None
        if self._began:
            self._refuse(HeadTimeout(self._head_timeout))
        else:  # nothing was asked: there is no one to answer
            self.transport.close()

    def _refuse(self, err: ServiceError) -> None:
        self._refused = True
        self._in_head = False
        self._disarm()
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # The head is a pipelined one behind a response still being written: an answer
            # now would land inside that response, so the connection just ends.
            self.transport.close()
            return
        body = problem_body(err.status, err.code, err.title, err.detail)
        head = (
            f"HTTP/1.1 {err.status} {HTTPStatus(err.status).phrase}\r\n"
            f"content-type: {PROBLEM_MEDIA_TYPE}\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode("latin-1") + body)
        self.transport.close()

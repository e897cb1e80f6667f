"""Request heads (request line and headers), bounded in size and in time at the protocol.

uvicorn's httptools protocol buffers a head of any size and waits for it for ever: a 32 MiB
header is read whole, and a connection that stops half-way through its headers is held for
as long as the client likes. Neither reaches the app, so no middleware can help; this
subclass of the protocol counts the bytes that arrive while a head is open and arms a timer
when one starts. ``serve`` pins it as uvicorn's HTTP implementation (h11, the other one, is
slower and answers an oversized head with a bare 400).

The count is per network read: a head is refused at the first read that takes it past
``SPATIAL_DROPOUT_MAX_HEAD_BYTES``, so it costs at most that plus one read (256 KiB).

It is also where a small request to a hot route is offered to ``service.api.inline``. The
request is held from its head on. If its whole body comes in the same read, and the route
answers it, the answer is written here. Otherwise (the body is still coming, or the route
declines) it goes on to the ASGI app as uvicorn would have sent it, only a moment later.
"""

from __future__ import annotations

import asyncio
from functools import cache

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.api import inline
from service.api.bodies import body_parts
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
        self._held: bytearray | None = None  # the body of a request offered inline, so far
        self._held_request: tuple[inline.Route, inline.InlineRequest] | None = None
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
        if self._held is not None:  # its body is still coming: the ordinary way waits for it
            held, self._held, self._held_request = self._held, None, None
            if not self.transport.is_closing():
                self._release(held, complete=False)
        if self._in_head and self._head_bytes > self._max_head:
            self._refuse(HeadTooLarge(self._max_head))

    # The parser's callbacks: once refused, the rest of the read (a body, more requests) is
    # parsed still, but goes nowhere.

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        # After an answer written inline, in the same read: this request is not idle time.
        self._unset_keepalive_if_required()
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
        if not self._offer():
            super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._held is not None:
            self._held += body
        elif not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._answer(held)
        elif not self._refused:
            super().on_message_complete()

    # -- the inline path (service.api.inline) ---------------------------------------------

    def _offer(self) -> bool:
        """Hold this request for its route's inline handler, when it may take it: a POST with
        a plain Content-Length body, nothing else in flight on the connection, and no
        behaviour of uvicorn's own to honour (100-continue, upgrades, a root path, limits)."""
        if (
            self.expect_100_continue
            or self.root_path
            or self.limit_concurrency is not None
            or self.pipeline
            or (self.cycle is not None and not self.cycle.response_complete)
            or self.transport.is_closing()
            or self.parser.get_method() != b"POST"
            or self.parser.should_upgrade()
        ):
            return False
        length: int | None = None
        for name, value in self.headers:
            if name == b"content-length" and length is None and value.isdigit():
                length = int(value)
            elif name in (b"content-length", b"transfer-encoding", b"content-encoding"):
                return False  # repeated, chunked or encoded: the ordinary way words it
        if length is None:
            return False
        try:
            url = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            return False
        path = url.path.decode("latin-1")
        offered = None if "%" in path else inline.takes("POST", path, length)
        if offered is None:
            return False
        route, params = offered
        self._held = bytearray()
        request = inline.InlineRequest("POST", path, url.query or b"", self.headers, self._held)
        request.path_params = params
        self._held_request = (route, request)
        return True

    def _answer(self, body: bytearray) -> None:
        assert self._held_request is not None
        route, request = self._held_request
        self._held_request = None
        response = inline.answer(route, request)
        if response is None:  # declined, untouched
            self._release(body, complete=True)
            return
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        head = [STATUS_LINE[response.status_code]]
        for name, value in (*self.server_state.default_headers, *response.raw_headers):
            head += (name, b": ", value, b"\r\n")
        if not keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        self.transport.writelines([b"".join(head), *body_parts(response)])
        self.server_state.total_requests += 1
        if not keep_alive:
            self.transport.close()
        else:  # as uvicorn does after a response, with nothing queued behind it
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _release(self, body: bytearray, *, complete: bool) -> None:
        """Send a held request the ordinary way: what uvicorn's callbacks would have done."""
        super().on_headers_complete()
        if body:
            super().on_body(bytes(body))
        if complete:
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
            f"content-type: {PROBLEM_MEDIA_TYPE}\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(STATUS_LINE[err.status] + head.encode("latin-1") + body)
        self.transport.close()

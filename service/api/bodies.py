"""Request bodies into one writable buffer, and responses sent from buffers without copies.

Starlette's ``Request.body()`` joins the received chunks into immutable ``bytes``, so a tensor
decoded from it is read-only and the kernel needs a second 128 MiB buffer for its output.
Appending the chunks to one ``bytearray`` costs the same one copy and leaves a buffer the
kernel may overwrite in place.

The buffer grows with the bytes that arrived, never with what Content-Length announces: a
client that announces 64 MiB and sends 48 bytes holds 48 bytes. Growing is cheap where it
matters: CPython over-allocates a bytearray by an eighth, and glibc moves a large (mmapped)
block by remapping its pages (mremap), not by copying them, so a 128 MiB body costs one copy
and the untouched slack of the last growth is never resident.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.errors import BodyTooLarge

#: Up to this size, a response's parts are joined and sent as one.
JOIN_BYTES: Final = 64 * 1024


async def read_body(request: Request, limit: int | None = None) -> bytearray:
    """The whole body, in a buffer of its own that the caller may modify; with ``limit``, a
    route's own bound below the server's, refused (413) as soon as the body passes it."""
    if limit is not None:
        announced = request.headers.get("content-length")
        if announced is not None and announced.isdigit() and int(announced) > limit:
            raise BodyTooLarge(limit)
    # From receive() itself: Request.stream() is an async generator, and going through one
    # costs a small request more than its copy.
    buffer = bytearray()
    more = True
    while more:
        message = await request.receive()
        if message["type"] != "http.request":
            raise ClientDisconnect
        buffer += message.get("body", b"")
        if limit is not None and len(buffer) > limit:
            raise BodyTooLarge(limit)
        more = message.get("more_body", False)
    return buffer


class BuffersResponse(Response):
    """A response whose body is several buffers (e.g. a header and a view of an array),
    sent one after the other so that none is copied into a joined body first."""

    def __init__(
        self,
        parts: Sequence[bytes | memoryview],
        *,
        media_type: str,
        headers: dict[str, str] | None = None,
        status_code: int = 200,
    ) -> None:
        # Not Response.__init__: its header handling (charsets, a body to measure) is for
        # bodies of other kinds, and costs a small answer more than its tensor does.
        self.status_code = status_code
        self.media_type = media_type
        self.background = None
        self.body = b""  # what Response.__init__ leaves for no content: the parts are the body
        self.parts = [memoryview(part).cast("B") for part in parts]
        size = sum(part.nbytes for part in self.parts)
        if size <= JOIN_BYTES and len(self.parts) > 1:
            # Each part is a write to the socket: below this, one copy costs less.
            self.parts = [memoryview(b"".join(self.parts))]
        raw = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in (headers or {}).items()
        ]
        raw.append((b"content-type", media_type.encode("latin-1")))
        raw.append((b"content-length", str(size).encode("latin-1")))
        self.raw_headers = raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        last = len(self.parts) - 1
        for index, part in enumerate(self.parts):
            await send({"type": "http.response.body", "body": part, "more_body": index < last})
        if not self.parts:
            await send({"type": "http.response.body", "body": b""})


def body_parts(response: Response) -> Sequence[bytes | memoryview]:
    """The buffers ``response`` sends as its body, in order."""
    return response.parts if isinstance(response, BuffersResponse) else [response.body]

"""Compressed request bodies (``Content-Encoding: gzip`` / ``deflate``), bounded against bombs.

Every route takes them alike: ``BodyLimitMiddleware`` inflates the body as it streams in (an
``Inflater`` per request), so routes only ever see identity bodies, and what the limit counts
is what the route would hold.
"""

from __future__ import annotations

import zlib
from typing import Final

from service.errors import BodyTooLarge, InvalidCompressedBody, UnsupportedContentEncoding

# zlib's wbits: 16 + MAX_WBITS reads a gzip member, MAX_WBITS a zlib stream (HTTP's "deflate").
_WBITS: Final[dict[str, int]] = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}


class Inflater:
    """One compressed body, inflated piece by piece; never more than ``limit`` bytes out."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.produced = 0
        self._inflater = zlib.decompressobj(_WBITS[name])

    def feed(self, data: bytes | bytearray, *, final: bool) -> bytes:
        """The bytes ``data`` inflates to; ``final`` when it is the body's last piece."""
        if self._inflater.eof and data:
            raise InvalidCompressedBody(f"The {self.name} body has trailing bytes.")
        room = self.limit - self.produced
        try:
            # At most one byte past the limit is made, so a bomb costs no more than the limit.
            out = self._inflater.decompress(data, room + 1)
        except zlib.error as exc:
            raise InvalidCompressedBody(
                f"The {self.name} body cannot be inflated: {exc}."
            ) from None
        if len(out) > room:
            raise BodyTooLarge(self.limit)
        self.produced += len(out)
        if self._inflater.unused_data:
            raise InvalidCompressedBody(f"The {self.name} body has trailing bytes.")
        if final and not self._inflater.eof:
            raise InvalidCompressedBody(f"The {self.name} body is truncated.")
        return out


def inflater_for(encoding: str, limit: int) -> Inflater | None:
    """The inflater a ``Content-Encoding`` needs; None for identity; 415 for anything else."""
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return None
    if name not in _WBITS:
        raise UnsupportedContentEncoding(encoding)
    return Inflater(name, limit)

"""Compressed request bodies (``Content-Encoding: gzip`` / ``deflate``), bounded against bombs."""

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


def decode_content(body: bytearray, encoding: str | None, limit: int) -> bytearray | bytes:
    """The body, inflated; never more than ``limit`` bytes are produced (a bomb gets 413)."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return body
    wbits = _WBITS.get(name)
    if wbits is None:
        raise UnsupportedContentEncoding(encoding or "")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidCompressedBody(f"The {name} body cannot be inflated: {exc}.") from None
    if len(out) > limit:
        raise BodyTooLarge(limit)
    if not inflater.eof or inflater.unused_data:
        raise InvalidCompressedBody(f"The {name} body is truncated or has trailing bytes.")
    return out

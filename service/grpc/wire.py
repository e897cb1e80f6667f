"""The protobuf wire form of the one field that carries tensors, read and written by hand.

protobuf's own parser copies every ``bytes`` field into its message, and each read of the
field copies it again into a new Python object: twice 128 MiB for a large input. Here the
raw tensor fields are cut out of the bytes grpcio hands over as views (no copy), and the
rest, a few hundred bytes, goes to protobuf. Answers are built the other way round: the
small message serialized by protobuf, the tensors' bytes written after it (protobuf readers
accept fields in any order, and a repeated field's entries in the order they come).
"""

from __future__ import annotations

from typing import Final

from service.errors import InvalidInferRequest

#: Wire type of length-delimited fields (bytes, strings, messages).
LENGTH_DELIMITED: Final = 2
_VARINT, _FIXED64, _FIXED32 = 0, 1, 5


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    """The varint at ``at`` and the offset after it."""
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise InvalidInferRequest("The request is not a valid protobuf message.")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def split_field(data: bytes, number: int) -> tuple[bytes, list[memoryview]]:
    """``data`` without the top-level field ``number`` (length-delimited), and that field's
    entries as views into ``data``, in order."""
    view = memoryview(data)
    kept: list[memoryview] = []
    taken: list[memoryview] = []
    at = 0
    start = 0  # where the run of kept fields began
    while at < len(view):
        field_start = at
        key, at = _varint(view, at)
        wire_type = key & 7
        if wire_type == _VARINT:
            _, at = _varint(view, at)
        elif wire_type == _FIXED64:
            at += 8
        elif wire_type == _FIXED32:
            at += 4
        elif wire_type == LENGTH_DELIMITED:
            length, at = _varint(view, at)
            if key >> 3 == number:
                if at + length > len(view):
                    break
                kept.append(view[start:field_start])
                taken.append(view[at : at + length])
                at += length
                start = at
                continue
            at += length
        else:
            raise InvalidInferRequest("The request is not a valid protobuf message.")
    if at > len(view):
        raise InvalidInferRequest("The request is not a valid protobuf message (truncated).")
    if not taken:
        return data, taken
    kept.append(view[start:])
    return b"".join(kept), taken


def field_header(number: int, length: int) -> bytes:
    """The key and length that precede a length-delimited field's ``length`` bytes."""
    out = bytearray()
    for value in ((number << 3) | LENGTH_DELIMITED, length):
        while value > 0x7F:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out)

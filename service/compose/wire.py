"""Count an ONNX model's nodes from its protobuf bytes, before anything is parsed.

Parsing a hostile model builds one object per node, and the checker and shape inference then
walk them all: a body of a few megabytes can hold a million nodes. This scan reads only the
wire format (tags and lengths) along the few fields that lead to nodes, keeps no objects, and
stops as soon as the count passes the limit, so its memory is bounded by the nesting depth and
its time by the limit (and, at worst, by the body's size). It walks::

    ModelProto.graph (7), .functions (25), .training_info (20: .initialization 1, .algorithm 2)
    GraphProto.node (1)            FunctionProto.node (7)
    NodeProto.attribute (5)        AttributeProto.g (6), .graphs (11)

and skips every other field by its length. A node or attribute whose bytes lack the tag byte
of the field that could lead further (``bytes.find``, in C) is skipped whole without being
read: nodes without attributes, and attributes without graphs, cost one tag and one length.
Bytes that are not a well-formed protobuf message along those paths are refused here, as the
parser would refuse them.
"""

from __future__ import annotations

from typing import Final

from service.errors import InvalidModel, TooManyNodes

_MODEL, _GRAPH, _FUNCTION, _TRAINING, _NODE, _ATTRIBUTE = range(6)
_NAMES: Final = (
    "ModelProto",
    "GraphProto",
    "FunctionProto",
    "TrainingInfoProto",
    "NodeProto",
    "AttributeProto",
)
#: (message, field number) -> the message in that length-delimited field, on the paths that
#: lead to nodes.
_CHILDREN: Final[dict[tuple[int, int], int]] = {
    (_MODEL, 7): _GRAPH,
    (_MODEL, 20): _TRAINING,
    (_MODEL, 25): _FUNCTION,
    (_TRAINING, 1): _GRAPH,
    (_TRAINING, 2): _GRAPH,
    (_GRAPH, 1): _NODE,
    (_FUNCTION, 7): _NODE,
    (_NODE, 5): _ATTRIBUTE,
    (_ATTRIBUTE, 6): _GRAPH,
    (_ATTRIBUTE, 11): _GRAPH,
}
#: Tag bytes (field << 3 | 2, all below 128: one byte) that a message must contain to lead
#: further: NodeProto.attribute; AttributeProto.g or .graphs.
_LEADS: Final[dict[int, tuple[bytes, ...]]] = {
    _NODE: (bytes([5 << 3 | 2]),),
    _ATTRIBUTE: (bytes([6 << 3 | 2]), bytes([11 << 3 | 2])),
}
#: As protobuf's own default recursion limit: the parser refuses deeper models anyway.
MAX_DEPTH: Final = 100


def count_nodes(data: bytes | bytearray, limit: int) -> int:
    """The number of nodes in the model (all graphs, subgraphs and functions), at most ``limit``.

    Raises TooManyNodes past ``limit``, InvalidModel for bytes that do not scan.
    """
    count = 0
    # (message, end offset); the cursor ``pos`` moves forward through the whole buffer.
    stack: list[tuple[int, int]] = [(_MODEL, len(data))]
    kind, end = stack[-1]
    pos = 0
    while True:
        if pos >= end:
            if pos > end:
                raise _malformed(kind, "a field runs past the end of its message")
            stack.pop()
            if not stack:
                return count
            kind, end = stack[-1]
            continue
        tag, pos = _varint(data, pos, end)
        wire = tag & 7
        if wire == 2:
            size, pos = _varint(data, pos, end)
            stop = pos + size
            if stop > end:
                raise _malformed(kind, "a length runs past the end of its message")
            child = _CHILDREN.get((kind, tag >> 3))
            if child is None:
                pos = stop
                continue
            if child == _NODE:
                count += 1
                if count > limit:
                    raise TooManyNodes(limit)
            leads = _LEADS.get(child)
            if leads is not None and all(data.find(t, pos, stop) < 0 for t in leads):
                pos = stop
                continue
            if len(stack) >= MAX_DEPTH:
                raise _malformed(kind, f"messages nested deeper than {MAX_DEPTH}")
            stack.append((child, stop))
            kind, end = child, stop
        elif tag >> 3 == 0:
            raise _malformed(kind, "field number 0")
        elif wire == 0:
            _, pos = _varint(data, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:  # 3 and 4 are the deprecated groups, 6 and 7 do not exist: ONNX uses none
            raise _malformed(kind, f"wire type {wire}")


def _varint(data: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    if pos < end and data[pos] < 0x80:  # most tags and lengths take one byte
        return data[pos], pos + 1
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise InvalidModel("The body is not an ONNX model: a truncated or overlong varint.")


def _malformed(kind: int, why: str) -> InvalidModel:
    return InvalidModel(f"The body is not an ONNX model: in a {_NAMES[kind]}, {why}.")

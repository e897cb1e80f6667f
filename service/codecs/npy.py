"""The ``.npy`` codec (``application/x-npy``): a strict, pickle-free reader; an np.save writer.

The reader parses the header itself rather than calling ``np.load`` so that every malformed or
hostile body fails with a precise ``InvalidNpy`` (or ``UnsupportedDtype``/``TensorTooLarge``)
before any data is touched, and never with whatever numpy, ``ast`` or ``pickle`` would raise.

Choices a client can observe:

* A negative dimension is ``InvalidNpy``: numpy never writes one, so the file is malformed,
  which is a different failure from a well-formed shape the service refuses (``InvalidShape``).
* ``fortran_order: True`` is accepted and the array returned as a C-contiguous copy.
* Big-endian data is accepted and converted to native order (one copy).
* ``|V2``/``<V2``/``=V2`` is bfloat16, which is how numpy writes an ``ml_dtypes`` bfloat16 array.
"""

from __future__ import annotations

import ast
import functools
import io
import math
import re
import sys
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import numpy as np
from numpy.typing import NDArray

from service.core.bounds import MAX_RANK
from service.core.dtypes import DTYPES, dtype_name
from service.errors import InvalidNpy, InvalidShape, TensorTooLarge, UnsupportedDtype

MEDIA_TYPE: Final = "application/x-npy"
MAGIC: Final = b"\x93NUMPY"
#: Far above any real header (a rank-32 header is < 1 KiB), far below what could hurt ``ast``.
MAX_HEADER_BYTES: Final = 64 * 1024

# Format version -> (size of the little-endian header-length field, header text encoding).
_VERSIONS: Final[dict[tuple[int, int], tuple[int, str]]] = {
    (1, 0): (2, "latin1"),
    (2, 0): (4, "latin1"),
    (3, 0): (4, "utf8"),
}
_HEADER_KEYS: Final = frozenset({"descr", "fortran_order", "shape"})
# descr type code without byte order ("f4", and "V2": numpy writes bfloat16 as 2-byte void)
# -> wire name, derived from the one dtype table.
_CODES: Final[dict[str, str]] = {dt.newbyteorder("<").str[1:]: n for n, dt in DTYPES.items()}
# The writer always emits little-endian data, whatever the host, as numpy does on every host
# the service runs on (x86-64, arm64).
_WRITE_DTYPES: Final = {name: dt.newbyteorder("<") for name, dt in DTYPES.items()}
_NATIVE_LITTLE: Final = sys.byteorder == "little"


class NpyParts(NamedTuple):
    """An encoded ``.npy`` as header bytes plus a view of the array's memory (no copy)."""

    header: bytes
    data: memoryview

    @property
    def nbytes(self) -> int:
        """Length of the whole file, for a ``Content-Length`` header."""
        return len(self.header) + self.data.nbytes


def format_shape(shape: Sequence[int]) -> str:
    """A shape as the JSON list clients write, cut short if absurdly long."""
    return _short(f"[{', '.join(map(_int_text, shape))}]")


def short_repr(value: object, limit: int = 80) -> str:
    """``repr`` of client input for a message: cut to ``limit`` characters, and never raising.

    Python refuses to print integers of more than 4300 digits (``ValueError``), and a hostile
    header or body can hold one, e.g. as a long hex literal.
    """
    try:
        return _short(repr(value), limit)
    except ValueError:
        return f"<a {type(value).__name__} too large to print>"


def check_shape(shape: Sequence[int], max_elements: int) -> int:
    """The element count of a non-negative shape, refusing ranks and sizes over the limits.

    Python ints throughout, so the product cannot overflow. Every dimension is bounded too, so
    a zero-size shape cannot smuggle in a dimension numpy cannot represent.
    """
    if len(shape) > MAX_RANK:
        raise InvalidShape(f"Rank {len(shape)} is above the maximum of {MAX_RANK}.")
    count = math.prod(shape)
    if count > max_elements:
        raise TensorTooLarge(
            f"Shape {format_shape(shape)} has {_int_text(count)} elements; "
            f"the limit is {max_elements}."
        )
    for dim in shape:
        if dim > max_elements:
            raise TensorTooLarge(
                f"Shape {format_shape(shape)} has a dimension above the limit of "
                f"{max_elements} elements."
            )
    return count


def decode_npy(body: bytes | bytearray | memoryview, *, max_elements: int) -> NDArray[Any]:
    """The array in a ``.npy`` body: a view of ``body`` when it is native C-order data.

    The view is read-only for a ``bytes`` body; copies are made only for big-endian or
    Fortran-order data.
    """
    view = memoryview(body).cast("B")
    offset = _header_end(view)
    layout = _layout(bytes(view[:offset]))
    shape = layout.shape
    count = check_shape(shape, max_elements)
    dtype = layout.dtype
    nbytes = count * dtype.itemsize
    available = len(view) - offset
    if available < nbytes:
        raise InvalidNpy(
            f"The .npy header promises {nbytes} data bytes (shape {format_shape(shape)}, "
            f"{layout.name}), but only {available} follow it."
        )
    if available > nbytes:
        raise InvalidNpy(
            f"{available - nbytes} unexpected bytes follow the {nbytes} data bytes "
            "the .npy header promises."
        )
    if layout.little == _NATIVE_LITTLE:
        flat = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
        if not layout.fortran_order:
            return flat.reshape(shape)
        return np.asarray(_shaped(flat, shape, fortran_order=True), order="C")
    # Foreign byte order: read as same-size unsigned ints and let the one copy swap them;
    # ml_dtypes' bfloat16 cannot swap its own bytes, unsigned ints can.
    uint = np.dtype(f"u{dtype.itemsize}")
    wire = uint.newbyteorder("<" if layout.little else ">")
    raw = np.frombuffer(view, dtype=wire, count=count, offset=offset)
    return _shaped(raw, shape, layout.fortran_order).astype(uint, order="C").view(dtype)


class _Layout(NamedTuple):
    """What a checked header says of its data."""

    name: str  # the wire dtype name
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool
    little: bool


#: Clients send the same few headers again and again: each is parsed and checked once. The
#: key is the whole header, at most MAX_HEADER_BYTES, so the memo stays under 4 MiB.
@functools.lru_cache(maxsize=64)
def _layout(header: bytes) -> _Layout:
    """The layout a whole header (magic to padding, as ``_header_end`` bounds it) gives."""
    major, minor = header[len(MAGIC)], header[len(MAGIC) + 1]
    length_size, encoding = _VERSIONS[major, minor]
    try:
        text = header[len(MAGIC) + 2 + length_size :].decode(encoding)
    except UnicodeDecodeError:
        raise InvalidNpy(f"The .npy header is not valid {encoding}.") from None
    descr, fortran_order, shape = _check_header(_literal(text))
    name, little = _parse_descr(descr)
    return _Layout(name, DTYPES[name], shape, fortran_order, little)


def encode_npy_parts(array: NDArray[Any]) -> NpyParts:
    """A ``.npy`` of ``array`` as header + data view, for zero-copy streaming of big tensors."""
    name = dtype_name(array.dtype)
    if name is None:
        raise UnsupportedDtype(array.dtype)
    dtype = _WRITE_DTYPES[name]
    # No copy when the array is already little-endian and C-contiguous (the usual case).
    data = np.asarray(array, dtype=dtype, order="C")
    return NpyParts(_header(dtype.str, data.shape), data.reshape(-1).view(np.uint8).data)


@functools.lru_cache(maxsize=256)
def _header(descr: str, shape: tuple[int, ...]) -> bytes:
    """The header bytes for a C-order array (a server sees the same shapes again and again)."""
    buffer = io.BytesIO()
    # numpy's own writer, so the header (padding, key order, growth space) is byte-identical
    # to np.save's; "<V2" for bfloat16 is what np.save writes and ml_dtypes reads back.
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def encode_npy(array: NDArray[Any]) -> bytes:
    """A ``.npy`` file of ``array`` (version 1.0, little-endian, C order), as ``np.save`` writes."""
    header, data = encode_npy_parts(array)
    return b"".join((header, data))


def _header_end(view: memoryview) -> int:
    """The offset of the data: the end of a header whose magic, version and length are sane
    (its text is not looked at yet)."""
    size = len(view)
    prefix = bytes(view[: len(MAGIC)])
    if prefix != MAGIC:
        if MAGIC.startswith(prefix):
            raise InvalidNpy(f"Truncated .npy: the body ends after {size} bytes of the magic.")
        raise InvalidNpy("Not a .npy file: the body does not start with b'\\x93NUMPY'.")
    if size < len(MAGIC) + 2:
        raise InvalidNpy("Truncated .npy: the body ends inside the format version.")
    major, minor = view[len(MAGIC)], view[len(MAGIC) + 1]
    if (major, minor) not in _VERSIONS:
        raise InvalidNpy(
            f"Unsupported .npy format version {major}.{minor}; expected 1.0, 2.0 or 3.0."
        )
    length_size, _ = _VERSIONS[major, minor]
    start = len(MAGIC) + 2 + length_size
    if size < start:
        raise InvalidNpy("Truncated .npy: the body ends inside the header length.")
    header_len = int.from_bytes(view[start - length_size : start], "little")
    # Checked before slicing or parsing: a 4 GiB claim must cost nothing.
    if header_len > MAX_HEADER_BYTES:
        raise InvalidNpy(
            f"The .npy header claims {header_len} bytes; at most {MAX_HEADER_BYTES} are accepted."
        )
    end = start + header_len
    if size < end:
        raise InvalidNpy(
            f"Truncated .npy: the header claims {header_len} bytes, but only {size - start} follow."
        )
    return end


def _literal(text: str) -> object:
    """The header's Python literal, not yet checked."""
    common = _parse_common_header(text)
    if common is not None:
        return common
    try:
        # literal_eval builds only literals (no calls, no names); its failure modes vary by
        # Python version (ValueError, SyntaxError, MemoryError, RecursionError, ...), so any
        # exception here means a malformed header.
        return ast.literal_eval(text)
    except Exception:
        raise InvalidNpy("The .npy header is not a Python literal.") from None


# The header exactly as numpy's writer lays it out; parsed without literal_eval, which
# compiles the text and was the largest cost of a small request.
_COMMON_HEADER = re.compile(
    r"\{'descr': '([<>|=][a-zA-Z][0-9]{1,2})', 'fortran_order': (True|False), "
    r"'shape': \(((?:0|[1-9][0-9]{0,18})(?:,|(?:, (?:0|[1-9][0-9]{0,18}))+)|)\), \} *\n?"
)


def _parse_common_header(text: str) -> dict[str, object] | None:
    """The header dict when ``text`` is in numpy's own layout (what literal_eval would give),
    else None."""
    match = _COMMON_HEADER.fullmatch(text)
    if match is None:
        return None
    descr, fortran, dims = match.groups()
    return {
        "descr": descr,
        "fortran_order": fortran == "True",
        "shape": tuple(int(dim) for dim in dims.replace(",", " ").split()),
    }


def _check_header(header: object) -> tuple[object, bool, tuple[int, ...]]:
    """The header's (descr, fortran_order, shape), checked for keys and types."""
    if not isinstance(header, dict):
        raise InvalidNpy(f"The .npy header is a {type(header).__name__}, not a dict.")
    if header.keys() != _HEADER_KEYS:
        got = ", ".join(sorted(short_repr(key) for key in header))
        raise InvalidNpy(
            "The .npy header must have exactly the keys 'descr', 'fortran_order' and "
            f"'shape'; it has {_short(got) or 'none'}."
        )
    fortran_order, shape = header["fortran_order"], header["shape"]
    if type(fortran_order) is not bool:
        raise InvalidNpy("The .npy header's 'fortran_order' must be True or False.")
    # type() rather than isinstance(): True is an int to Python, not a dimension to us.
    if type(shape) is not tuple or any(type(dim) is not int for dim in shape):
        raise InvalidNpy(
            f"The .npy header's 'shape' must be a tuple of integers, not {short_repr(shape)}."
        )
    if any(dim < 0 for dim in shape):
        raise InvalidNpy(f"The .npy shape {format_shape(shape)} has a negative dimension.")
    return header["descr"], fortran_order, shape


def _parse_descr(descr: object) -> tuple[str, bool]:
    """The wire dtype name of a header's descr, and whether its data is little-endian.

    Refuses object ('|O': how pickles get into .npy files) and structured (list) dtypes here,
    before the data is looked at.
    """
    if isinstance(descr, list):
        raise UnsupportedDtype(short_repr(descr))
    if not isinstance(descr, str):
        raise InvalidNpy(f"The .npy header's 'descr' must be a string, not {short_repr(descr)}.")
    order, code = (descr[0], descr[1:]) if descr[:1] in ("<", ">", "=", "|") else ("=", descr)
    name = _CODES.get(code)
    if name is None:
        raise UnsupportedDtype(_short(descr))
    # '|' ("byte order not applicable") is numpy's word for single bytes and voids: native.
    little = order == "<" or (order in ("=", "|") and _NATIVE_LITTLE)
    return name, little


def _shaped(flat: NDArray[Any], shape: tuple[int, ...], fortran_order: bool) -> NDArray[Any]:
    """``flat`` viewed with ``shape``, in the element order the header declared."""
    return flat.reshape(shape[::-1]).T if fortran_order else flat.reshape(shape)


def _short(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters: messages quote client input, which may be huge."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int_text(value: int) -> str:
    """An integer for a message; one too long to print (see ``short_repr``) by its size."""
    return str(value) if value.bit_length() <= 256 else f"<a {value.bit_length()}-bit integer>"

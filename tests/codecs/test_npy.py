"""The .npy codec: what np.save writes decodes exactly, hostile bodies fail as InvalidNpy & co."""

from __future__ import annotations

import ast
import contextlib
import io
import struct
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from service.codecs.npy import _parse_common_header, decode_npy, encode_npy, encode_npy_parts
from service.errors import (
    InvalidNpy,
    InvalidShape,
    ServiceError,
    TensorTooLarge,
    UnsupportedDtype,
)

LIMIT = 1_000_000
BF16 = np.dtype(ml_dtypes.bfloat16)
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def save(array: NDArray[Any], **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


def npy(header: str | bytes, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy body with a hand-written header (no padding needed: readers must not rely on it)."""
    raw = header.encode("latin1") if isinstance(header, str) else header
    length = struct.pack("<H" if version == (1, 0) else "<I", len(raw))
    return b"\x93NUMPY" + bytes(version) + length + raw + data


def bits(array: NDArray[Any]) -> NDArray[Any]:
    """The raw bits of a native float array, for bit-exact comparisons (NaN payloads, -0.0)."""
    return np.ascontiguousarray(array).view(_UINT[array.dtype.itemsize])


def f4_header(shape: str, descr: str = "<f4", fortran: str = "False") -> str:
    return f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}\n"


# -- what np.save writes -----------------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.arange(6, dtype="<f4").reshape(2, 3),
        np.arange(6, dtype=">f8").reshape(2, 3),
        np.asfortranarray(np.arange(24, dtype="<f2").reshape(2, 3, 4)),
        np.asfortranarray(np.arange(6, dtype=">f4").reshape(3, 2)),
        np.array(2.5, dtype=np.float64),
        np.zeros((2, 0, 3), dtype=np.float32),
        np.zeros((0,), dtype=">f2"),
        np.array([1.5, -2.0, 3.25], dtype=BF16),
    ],
    ids=["f4", "be-f8", "fortran-f2", "fortran-be-f4", "scalar", "zero-size", "be-empty", "bf16"],
)
def test_decodes_what_np_save_writes(array: NDArray[Any]) -> None:
    decoded = decode_npy(save(array), max_elements=LIMIT)
    assert decoded.shape == array.shape
    assert decoded.dtype == array.dtype.newbyteorder("=")
    assert decoded.dtype.isnative
    assert decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded.astype(np.float64), array.astype(np.float64))


_SAVE_DTYPES = ["<f2", ">f2", "<f4", ">f4", "<f8", ">f8", "=f4", BF16]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(_SAVE_DTYPES).flatmap(
        lambda dtype: st.tuples(
            st.just(np.dtype(dtype)),
            hnp.arrays(
                _UINT[np.dtype(dtype).itemsize],
                hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4),
            ),
        )
    ),
    st.booleans(),
)
def test_np_save_round_trip_is_bit_exact(
    case: tuple[np.dtype[Any], NDArray[Any]], fortran: bool
) -> None:
    dtype, raw = case
    native = raw.view(dtype.newbyteorder("="))
    # astype to a byte-swapped float dtype swaps bytes without touching the bits' meaning;
    # bfloat16 is only ever little-endian (ml_dtypes cannot swap it).
    array = native if dtype == BF16 else native.astype(dtype)
    if fortran:
        array = np.asarray(array, order="F")  # np.asfortranarray would make a 0-d array 1-d
    decoded = decode_npy(save(array), max_elements=LIMIT)
    assert decoded.dtype == native.dtype
    assert decoded.shape == raw.shape
    assert decoded.flags.c_contiguous
    np.testing.assert_array_equal(bits(decoded), raw)


def test_native_c_order_is_a_view_of_the_body() -> None:
    body = bytearray(save(np.zeros(4, dtype=np.float32)))
    decoded = decode_npy(body, max_elements=LIMIT)
    body[-4:] = np.float32(7).tobytes()  # writing through the body shows in the array
    assert decoded[-1] == 7
    readonly = decode_npy(bytes(body), max_elements=LIMIT)
    assert not readonly.flags.writeable
    assert decode_npy(memoryview(bytes(body)), max_elements=LIMIT)[-1] == 7


@pytest.mark.parametrize("version", [(2, 0), (3, 0)])
def test_versions_2_and_3(version: tuple[int, int]) -> None:
    body = npy(f4_header("(2,)"), np.array([1, 2], "<f4").tobytes(), version)
    np.testing.assert_array_equal(decode_npy(body, max_elements=LIMIT), [1, 2])


@pytest.mark.parametrize(
    ("descr", "expected"),
    [
        ("<f4", np.float32),
        ("=f4", np.float32),
        ("|f4", np.float32),
        ("f4", np.float32),
        ("<V2", BF16),
        ("|V2", BF16),
        ("<f8", np.float64),
        ("<f2", np.float16),
    ],
)
def test_descr_spellings(descr: str, expected: Any) -> None:
    size = np.dtype(expected).itemsize
    decoded = decode_npy(npy(f4_header("(3,)", descr), bytes(3 * size)), max_elements=LIMIT)
    assert decoded.dtype == np.dtype(expected)


def test_big_endian_bfloat16_is_swapped() -> None:
    values = np.array([1.5, -3.0], dtype=BF16)
    body = npy(f4_header("(2,)", ">V2"), values.view(np.uint16).astype(">u2").tobytes())
    np.testing.assert_array_equal(bits(decode_npy(body, max_elements=LIMIT)), bits(values))


# -- encoding --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from([np.float16, np.float32, np.float64]),
        hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4),
        elements={"allow_nan": False},
    )
)
def test_encode_matches_np_save_bytes(array: NDArray[Any]) -> None:
    assert encode_npy(array) == save(array)


def test_encode_bfloat16_round_trips_through_np_load() -> None:
    array = np.array([[1.5, -2.0], [np.inf, 0.0078125]], dtype=BF16)
    body = encode_npy(array)
    assert b"'descr': '<V2'" in body
    loaded = np.load(io.BytesIO(body)).view(BF16)
    np.testing.assert_array_equal(bits(loaded), bits(array))
    np.testing.assert_array_equal(bits(decode_npy(body, max_elements=LIMIT)), bits(array))


@pytest.mark.parametrize(
    "array",
    [np.asfortranarray(np.arange(6, dtype=">f4").reshape(2, 3)), np.arange(8.0)[::2]],
    ids=["fortran-big-endian", "strided"],
)
def test_encode_writes_native_c_order(array: NDArray[Any]) -> None:
    body = encode_npy(array)
    assert body == save(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")))
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), array)


def test_encode_parts_is_zero_copy() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    parts = encode_npy_parts(array)
    assert parts.header + bytes(parts.data) == encode_npy(array)
    assert parts.nbytes == len(encode_npy(array))
    assert len(parts.header) % 64 == 0
    assert np.shares_memory(np.frombuffer(parts.data, dtype=np.uint8), array)


def test_encode_refuses_other_dtypes() -> None:
    with pytest.raises(UnsupportedDtype, match="'int32'"):
        encode_npy(np.arange(3, dtype=np.int32))


# -- refusals --------------------------------------------------------------------------

_GOOD_F4 = npy(f4_header("(2, 3)"), bytes(24))
_LONG_HEADER = "{'descr': '<f4', 'fortran_order': False, 'shape': (1,)}" + " " * 70_000


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        (b"", InvalidNpy, "Truncated .npy: the body ends after 0 bytes of the magic"),
        (b"\x93NUM", InvalidNpy, "ends after 4 bytes of the magic"),
        (b"PK\x03\x04 a zip file", InvalidNpy, "Not a .npy file: the body does not start with"),
        (b"\x93NUMPY\x01", InvalidNpy, "ends inside the format version"),
        (b"\x93NUMPY\x04\x00\x10\x00", InvalidNpy, "Unsupported .npy format version 4.0"),
        (b"\x93NUMPY\x01\x01\x10\x00", InvalidNpy, "version 1.1; expected 1.0, 2.0 or 3.0"),
        (b"\x93NUMPY\x01\x00\x10", InvalidNpy, "ends inside the header length"),
        (
            b"\x93NUMPY\x02\x00\xff\xff\xff\xff",
            InvalidNpy,
            "claims 4294967295 bytes; at most 65536",
        ),
        (npy(_LONG_HEADER, version=(2, 0)), InvalidNpy, "at most 65536 are accepted"),
        (b"\x93NUMPY\x01\x00\x40\x00{'descr'", InvalidNpy, "claims 64 bytes, but only 8 follow"),
        (npy("[1, 2]"), InvalidNpy, "The .npy header is a list, not a dict."),
        (npy("{'descr': '<f4', 'shape': (2,)}"), InvalidNpy, "it has 'descr', 'shape'."),
        (
            npy("{}"),
            InvalidNpy,
            "exactly the keys 'descr', 'fortran_order' and 'shape'; it has none",
        ),
        (npy(f4_header("(1,)")[:-3] + "'x': 1}"), InvalidNpy, "'shape', 'x'"),
        (npy("{'descr': __import__('os').system('true')}"), InvalidNpy, "not a Python literal"),
        (npy("(" * 10_000), InvalidNpy, "not a Python literal"),
        (npy("-" * 60_000 + "1"), InvalidNpy, "not a Python literal"),
        (npy("{'a': 1}\x00"), InvalidNpy, "not a Python literal"),
        (npy(b"{'descr': '\xff'}", version=(3, 0)), InvalidNpy, "not valid utf8"),
        (npy(f4_header("(2,)", fortran="1")), InvalidNpy, "'fortran_order' must be True or False"),
        (npy(f4_header("[2]")), InvalidNpy, "'shape' must be a tuple of integers, not [2]"),
        (npy(f4_header("(True,)")), InvalidNpy, "'shape' must be a tuple of integers"),
        (npy(f4_header("(2.0,)")), InvalidNpy, "'shape' must be a tuple of integers"),
        (npy(f4_header("(2, -1)")), InvalidNpy, "The .npy shape [2, -1] has a negative dimension."),
        (npy(f4_header("(2,)", "|O")), UnsupportedDtype, "Unsupported dtype '|O'"),
        (npy(f4_header("(2,)", "<i4")), UnsupportedDtype, "'<i4'"),
        (npy(f4_header("(2,)", "<f16")), UnsupportedDtype, "'<f16'"),
        (npy(f4_header("(2,)", "")), UnsupportedDtype, "''"),
        (npy(f4_header("(2,)", "float32")), UnsupportedDtype, "'float32'"),
        (
            npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}"),
            UnsupportedDtype,
            "[('a', '<f4')]",
        ),
        (npy("{'descr': 4, 'fortran_order': False, 'shape': (2,)}"), InvalidNpy, "not 4."),
        (_GOOD_F4[:-4], InvalidNpy, "promises 24 data bytes (shape [2, 3], float32), but only 20"),
        (_GOOD_F4 + b"junk", InvalidNpy, "4 unexpected bytes follow the 24 data bytes"),
        (npy(f4_header("(2000, 2000)")), TensorTooLarge, "has 4000000 elements; the limit is"),
        (npy(f4_header(f"({2**40},)")), TensorTooLarge, f"Shape [{2**40}] has {2**40} elements"),
        (
            npy(f4_header(f"({2**32}, {2**32}, {2**32})")),  # product overflows int64
            TensorTooLarge,
            f"has {2**96} elements; the limit is 1000000.",
        ),
        (
            npy(f4_header("(" + "1, " * 33 + ")")),
            InvalidShape,
            "Rank 33 is above the maximum of 32",
        ),
    ],
)
def test_refusals(body: bytes, error: type[ServiceError], fragment: str) -> None:
    with pytest.raises(error) as caught:
        decode_npy(body, max_elements=LIMIT)
    assert type(caught.value) is error
    assert fragment in caught.value.detail


def test_product_beyond_int64_is_too_large_even_with_a_huge_limit() -> None:
    body = npy(f4_header(f"({2**62}, {2**62})"))
    with pytest.raises(TensorTooLarge, match=f"has {2**124} elements"):
        decode_npy(body, max_elements=2**63)


def test_every_truncation_is_invalid_npy() -> None:
    body = save(np.arange(6, dtype=np.float32).reshape(2, 3))
    for end in range(len(body)):
        with pytest.raises(InvalidNpy):
            decode_npy(body[:end], max_elements=LIMIT)


_UNPICKLED: list[str] = []


def _record() -> str:
    _UNPICKLED.append("unpickled")
    return "boom"


class _Payload:
    """Pickles to a call of ``_record``: proof of unpickling if it ever runs."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_record, ())


def test_object_arrays_are_refused_before_unpickling() -> None:
    body = save(np.array([_Payload()], dtype=object), allow_pickle=True)
    np.load(io.BytesIO(body), allow_pickle=True)  # the payload is live: numpy would run it
    assert _UNPICKLED == ["unpickled"]
    with pytest.raises(UnsupportedDtype, match=r"'\|O'"):
        decode_npy(body, max_elements=LIMIT)
    assert _UNPICKLED == ["unpickled"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_fail_only_with_service_errors(body: bytes) -> None:
    for candidate in (body, b"\x93NUMPY\x01\x00" + body, _GOOD_F4[:10] + body):
        with contextlib.suppress(ServiceError):
            decode_npy(candidate, max_elements=LIMIT)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(0, 2**40), max_size=6).map(tuple),
    st.sampled_from(["<f4", ">f8", "<f2", "|V2", "<i8", "|O", "|b1", "<c16"]),
    st.booleans(),
)
def test_the_fast_header_parser_agrees_with_literal_eval(
    shape: tuple[int, ...], descr: str, fortran: bool
) -> None:
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    text = buffer.getvalue()[10:].decode("latin1")
    fast = _parse_common_header(text)
    assert fast is None or fast == ast.literal_eval(text)
    if descr != "|O":
        assert fast == header  # numpy's own layout always takes the fast path


@pytest.mark.parametrize(
    "text",
    [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (5), }",  # an int, not a tuple
        "{'descr': '<f4', 'fortran_order': False, 'shape': (05,), }",  # not a Python literal
        "{'descr': '<f4', 'fortran_order': 0, 'shape': (5,), }",
        "{'shape': (5,), 'descr': '<f4', 'fortran_order': False, }",  # another key order
    ],
)
def test_headers_off_numpys_layout_take_the_slow_path(text: str) -> None:
    assert _parse_common_header(text) is None


def test_a_header_seen_before_is_still_checked_against_each_body_and_limit() -> None:
    body = save(np.arange(12, dtype=np.float32).reshape(3, 4))
    for _ in range(2):  # the second decode finds the header's layout remembered
        np.testing.assert_array_equal(decode_npy(body, max_elements=LIMIT).ravel(), np.arange(12))
    with pytest.raises(TensorTooLarge):
        decode_npy(body, max_elements=11)
    with pytest.raises(InvalidNpy, match="only 44 follow"):
        decode_npy(body[:-4], max_elements=LIMIT)
    with pytest.raises(InvalidNpy, match="unexpected bytes"):
        decode_npy(body + b"\0", max_elements=LIMIT)
    refused = npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }")
    for _ in range(2):  # a refusal is made again, never remembered as a layout
        with pytest.raises(UnsupportedDtype):
            decode_npy(refused, max_elements=LIMIT)

"""Property fuzzing of every decoder with raw and mutated bytes, and of the V2 codec's round trips.

tests/codecs already covers .npy round trips, short random bytes for .npy and arbitrary parsed
JSON for the tensor decoder. This adds what they do not reach: the V2 codec (split_body,
decode_infer, encode_infer), bodies as raw bytes for every decoder (JSON ones included: a body
is bytes before it is JSON), valid bodies with bytes flipped, cut or inserted, compressed
bodies, and shapes that name dimensions numpy cannot represent. Every decoder must either
decode or raise one of the service's own errors (ServiceError): anything else is a 500.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from service.api.encoding import inflater_for
from service.codecs.json_tensor import decode_tensor, may_hold_booleans
from service.codecs.npy import decode_npy, encode_npy
from service.codecs.v2 import WantedOutput, decode_infer, encode_infer, split_body
from service.core.dtypes import DTYPES, V2_DATATYPES
from service.errors import InvalidJson, ServiceError
from service.inference import InferResult

LIMIT = 4096  # elements: small, so that huge claims are refused rather than allocated
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
_UINT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def bits(array: NDArray[Any]) -> NDArray[Any]:
    return np.ascontiguousarray(array).reshape(-1).view(_UINT[array.dtype.itemsize])


def arrays() -> st.SearchStrategy[NDArray[Any]]:
    """Arrays of every supported dtype, any bits (NaN payloads, -0.0, inf) and small shapes."""
    return st.sampled_from(list(DTYPES)).flatmap(
        lambda name: hnp.arrays(
            _UINT[DTYPES[name].itemsize],
            hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4),
        ).map(lambda raw: raw.view(DTYPES[name]))
    )


@st.composite
def mutated(draw: st.DrawFn, body: bytes) -> bytes:
    """``body`` with a few bytes flipped, cut out or inserted, or cut short."""
    data = bytearray(body)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[at:]
    return bytes(data)


def decode_json_body(body: bytes, dtype: str | None = None) -> NDArray[Any]:
    """What /apply does with a JSON body's bytes: orjson, then the tensor decoder."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(str(exc)) from None
    value = payload.get("input") if isinstance(payload, dict) else payload
    array, _form = decode_tensor(
        value,
        dtype=dtype,
        max_elements=LIMIT,
        no_booleans=not may_hold_booleans(body, payload),
    )
    return array


# -- raw and mutated bytes, every decoder ------------------------------------------------------


@FUZZ
@given(st.binary(max_size=512))
def test_raw_bytes_fail_every_decoder_only_with_service_errors(body: bytes) -> None:
    with contextlib.suppress(ServiceError):
        decode_npy(body, max_elements=LIMIT)
    with contextlib.suppress(ServiceError):
        decode_json_body(body)
    with contextlib.suppress(ServiceError):
        decode_infer(body, None, max_elements=LIMIT)
    with contextlib.suppress(ServiceError):
        decode_infer(body, str(len(body) // 2), max_elements=LIMIT)
    for encoding in ("gzip", "deflate", "x-gzip", "identity", "br"):
        with contextlib.suppress(ServiceError):
            decode_content(bytearray(body), encoding, 1024)


@FUZZ
@given(arrays().flatmap(lambda a: mutated(encode_npy(a))))
def test_mutated_npy_fails_only_with_service_errors(body: bytes) -> None:
    with contextlib.suppress(ServiceError):
        decoded = decode_npy(body, max_elements=LIMIT)
        assert decoded.size <= LIMIT and decoded.flags.c_contiguous


def _flat_json(array: NDArray[Any]) -> bytes:
    values = array.astype(np.float64).ravel()
    return orjson.dumps(
        {"layer": "x", "input": {"shape": list(array.shape), "data": values[np.isfinite(values)]}},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


@FUZZ
@given(arrays().flatmap(lambda a: mutated(_flat_json(a))))
def test_mutated_json_fails_only_with_service_errors(body: bytes) -> None:
    with contextlib.suppress(ServiceError):
        decoded = decode_json_body(body)
        assert decoded.size <= LIMIT and np.isfinite(decoded).all()


@FUZZ
@given(
    st.binary(max_size=2048)
    .flatmap(
        lambda raw: st.tuples(
            st.sampled_from(["gzip", "deflate"]),
            st.just(raw),
            st.integers(0, 2048),
        )
    )
    .flatmap(
        lambda case: st.tuples(
            st.just(case[0]),
            st.just(case[1]),
            st.just(case[2]),
            mutated(_compress(case[1], case[0])) | st.just(_compress(case[1], case[0])),
        )
    )
)
def test_compressed_bodies_inflate_exactly_or_fail_with_service_errors(
    case: tuple[str, bytes, int, bytes],
) -> None:
    encoding, raw, limit, body = case
    try:
        out = decode_content(bytearray(body), encoding, limit)
    except ServiceError:
        return
    assert len(out) <= limit
    if body == _compress(raw, encoding):
        assert bytes(out) == raw


def decode_content(body: bytearray, encoding: str, limit: int) -> bytearray | bytes:
    """A whole body through the inflater the middleware would use for it."""
    inflater = inflater_for(encoding, limit)
    return body if inflater is None else inflater.feed(body, final=True)


def _compress(raw: bytes, encoding: str) -> bytes:
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return packer.compress(raw) + packer.flush()


# -- V2: split_body ------------------------------------------------------------------------


@FUZZ
@given(
    st.binary(max_size=256),
    st.none()
    | st.text(max_size=24)
    | st.integers(-(2**70), 2**70).map(str)
    | st.integers(0, 300).map(lambda n: f" {n}\t"),
)
def test_split_body_splits_exactly_or_refuses(body: bytes, header: str | None) -> None:
    try:
        head, tail = split_body(body, header)
    except ServiceError:
        assert header is not None
        return
    assert bytes(head) + bytes(tail) == body
    if header is not None:
        assert len(head) == int(header) > 0


# -- V2: decode_infer on structured hostile requests ---------------------------------------

_PARAM = (
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | st.text(max_size=4)
)
_SHAPES = st.lists(
    st.integers(0, 5) | st.sampled_from([-1, 2**31, 2**40, 2**63 - 1, 2**64, True]), max_size=5
)
_DATA = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3),
    lambda children: st.lists(children, max_size=6),
    max_leaves=30,
)


@st.composite
def infer_requests(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """An infer request with hostile fields anywhere, JSON or with a binary tail."""
    tensor: dict[str, Any] = {
        "name": draw(st.text(max_size=8)),
        "shape": draw(_SHAPES),
        "datatype": draw(st.sampled_from([*V2_DATATYPES.values(), "BOOL", "INT8", "BYTES", 3])),
    }
    binary = draw(st.booleans())
    tail = draw(st.binary(max_size=64)) if binary else b""
    if binary:
        size = draw(st.just(len(tail)) | _PARAM)
        tensor["parameters"] = {"binary_data_size": size}
    if not binary or draw(st.booleans()):
        tensor["data"] = draw(_DATA)
    request: dict[str, Any] = {"inputs": draw(st.just([tensor]) | st.lists(st.just(tensor)))}
    if draw(st.booleans()):
        request["id"] = draw(st.text(max_size=8) | st.integers())
    if draw(st.booleans()):
        keys = st.sampled_from(["training", "seed", "sample_offset", "binary_data_output", "x"])
        request["parameters"] = draw(st.dictionaries(keys, _PARAM, max_size=4))
    if draw(st.booleans()):
        names = st.sampled_from(["output", "mask", "other", ""])
        request["outputs"] = draw(st.lists(st.fixed_dictionaries({"name": names}), max_size=3))
    # json, not orjson: it writes integers beyond 64 bits and NaN, as a hostile client may.
    head = json.dumps(request).encode()
    header = str(len(head)) if binary else draw(st.none() | st.just(str(len(head))))
    return head + tail, header


@FUZZ
@given(infer_requests())
def test_hostile_infer_requests_fail_only_with_service_errors(
    case: tuple[bytes, str | None],
) -> None:
    body, header = case
    try:
        decoded = decode_infer(body, header, max_elements=LIMIT)
    except ServiceError:
        return
    tensors = decoded.request.inputs.values()
    assert tensors and sum(tensor.size for tensor in tensors) <= LIMIT
    assert all(
        tensor.dtype in set(DTYPES.values()) | {dt.newbyteorder("<") for dt in DTYPES.values()}
        for tensor in tensors
    )
    assert decoded.request.outputs == (tuple(o.name for o in decoded.outputs) or None)


@FUZZ
@given(infer_requests().flatmap(lambda case: st.tuples(mutated(case[0]), st.just(case[1]))))
def test_mutated_infer_requests_fail_only_with_service_errors(
    case: tuple[bytes, str | None],
) -> None:
    with contextlib.suppress(ServiceError):
        decode_infer(case[0], case[1], max_elements=LIMIT)


# -- V2: round trips --------------------------------------------------------------------------


def infer_request(array: NDArray[Any], binary: bool) -> tuple[bytes, str | None]:
    """What tritonclient sends for ``array``: JSON data, or a JSON header and raw bytes."""
    name = next(n for n, dt in DTYPES.items() if dt == array.dtype)
    tensor: dict[str, Any] = {"name": "x", "shape": list(array.shape)}
    tensor["datatype"] = V2_DATATYPES[name]
    if binary:
        raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
        head = orjson.dumps({"inputs": [tensor]})
        return head + raw, str(len(head))
    wide = array.astype(np.float32 if name == "bfloat16" else array.dtype).ravel()
    tensor["data"] = wide
    return orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY), None


@FUZZ
@given(arrays(), st.booleans())
def test_infer_requests_decode_bit_exactly(array: NDArray[Any], binary: bool) -> None:
    finite = bool(np.isfinite(array.astype(np.float64)).all())
    body, header = infer_request(array, binary)
    try:
        decoded = decode_infer(body, header, max_elements=LIMIT)
    except ServiceError:
        # JSON has no NaN or infinity: orjson writes them as null, which the decoder refuses.
        assert not binary and not finite
        return
    (tensor,) = decoded.request.inputs.values()
    assert tensor.shape == array.shape
    assert tensor.dtype.newbyteorder("=") == array.dtype
    np.testing.assert_array_equal(bits(tensor), bits(array))


def _joined(content: object) -> bytes:
    """encode_infer's body, whether it comes as one buffer or as parts to send in order."""
    if isinstance(content, bytes | bytearray):
        return bytes(content)
    assert isinstance(content, list)
    return b"".join(bytes(part) for part in content)


@FUZZ
@given(arrays(), st.lists(st.booleans(), min_size=1, max_size=2), st.text(max_size=6) | st.none())
def test_infer_responses_carry_every_output_bit_exactly(
    array: NDArray[Any], binary: list[bool], request_id: str | None
) -> None:
    mask = np.asarray(bits(array) % 2 == 0)
    tensors = [(WantedOutput("output", binary[0]), array)]
    if len(binary) > 1:
        tensors.append((WantedOutput("mask", binary[1]), mask))
    result = InferResult("m", "1", request_id, {"seed": 7}, {w.name: t for w, t in tensors})
    content, header_size = encode_infer(result, {w.name: w.binary for w, _ in tensors}.__getitem__)
    body = _joined(content)
    assert (header_size is not None) == any(binary)
    head = orjson.loads(body[:header_size] if header_size is not None else body)
    assert head["model_name"] == "m" and head.get("id") == request_id
    offset = len(body) if header_size is None else header_size
    for entry, (wanted, sent) in zip(head["outputs"], tensors, strict=True):
        assert entry["name"] == wanted.name and entry["shape"] == list(sent.shape)
        if wanted.binary:
            size = entry["parameters"]["binary_data_size"]
            raw = body[offset : offset + size]
            offset += size
            wire = np.dtype(bool) if entry["datatype"] == "BOOL" else sent.dtype.newbyteorder("<")
            got = np.frombuffer(raw, dtype=wire).reshape(sent.shape)
            np.testing.assert_array_equal(bits(got), bits(sent))
        elif sent.dtype == np.bool_:
            assert entry["data"] == sent.ravel().tolist()
        else:
            # JSON carries finite values exactly, in the shortest text that rounds back to the
            # dtype (bfloat16 widened to float32); NaN and inf have no JSON token: null.
            wide = sent.astype(np.float64).ravel()
            finite = np.isfinite(wide)
            got = np.array([np.nan if v is None else v for v in entry["data"]], np.float64)
            assert np.array_equal(np.isnan(got), ~finite)
            back = got[finite].astype(sent.dtype)
            np.testing.assert_array_equal(bits(back), bits(sent.ravel()[finite]))
    assert offset == len(body)


# -- shapes numpy cannot represent ------------------------------------------------------------

_HUGE_EMPTY = [[2**32, 2**32, 2**32, 0], [0, 2**63], [2**62, 2**62, 0], [LIMIT + 1, 0]]


@pytest.mark.parametrize("shape", _HUGE_EMPTY)
@pytest.mark.parametrize("fast", [False, True])
def test_zero_size_shapes_with_huge_dimensions_are_refused(shape: list[int], fast: bool) -> None:
    # The fast JSON path once let these through to numpy's reshape: a 500.
    with pytest.raises(ServiceError) as caught:
        decode_tensor({"shape": shape, "data": []}, max_elements=LIMIT, no_booleans=fast)
    assert caught.value.code == "tensor_too_large"
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode()
    with pytest.raises(ServiceError) as caught:
        decode_npy(body, max_elements=LIMIT)
    assert caught.value.code == "tensor_too_large"
    request = json.dumps(
        {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": []}]}
    ).encode()
    with pytest.raises(ServiceError) as caught:
        decode_infer(request, None, max_elements=LIMIT)
    assert caught.value.code == "tensor_too_large"


@FUZZ
@given(
    st.lists(st.integers(0, 2**70), max_size=5).flatmap(
        lambda dims: st.integers(0, len(dims)).map(lambda at: [*dims[:at], 0, *dims[at:]])
    ),
    st.booleans(),
)
def test_every_zero_size_shape_decodes_or_is_refused(shape: list[int], fast: bool) -> None:
    try:
        array, _ = decode_tensor({"shape": shape, "data": []}, max_elements=LIMIT, no_booleans=fast)
    except ServiceError as exc:
        assert exc.code in ("tensor_too_large", "invalid_shape")
        return
    assert list(array.shape) == shape and array.size == 0

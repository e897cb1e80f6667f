"""Tensors in JSON: both forms decode exactly, round-trip through orjson, and fail precisely."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from service.codecs.json_tensor import (
    TensorForm,
    decode_tensor,
    encode_tensor,
    may_hold_booleans,
)
from service.errors import (
    InvalidShape,
    RaggedTensor,
    RequestValidation,
    ServiceError,
    ShapeMismatch,
    TensorTooLarge,
    UnsupportedDtype,
    ValueOutOfRange,
)

LIMIT = 10_000
BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64, "bfloat16": BF16}
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def bits(array: NDArray[Any]) -> NDArray[Any]:
    return np.ascontiguousarray(array).view(_UINT[array.dtype.itemsize])


def nested(depth: int) -> list[Any]:
    """``depth`` levels of ``[[[...[1.0]...]]]``, built without recursion."""
    value: list[Any] = [1.0]
    for _ in range(depth - 1):
        value = [value]
    return value


def dumps_loads(value: object) -> object:
    return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))


# -- accepted --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kwargs", "expected", "form"),
    [
        ([[1, 2], [3, 4.5]], {}, np.array([[1, 2], [3, 4.5]], np.float32), TensorForm.NESTED),
        ([0.1, -2], {"dtype": "float16"}, np.array([0.1, -2], np.float16), TensorForm.NESTED),
        ([0.1], {"dtype": "float64"}, np.array([0.1]), TensorForm.NESTED),
        ([1.5, -0.0], {"dtype": "bfloat16"}, np.array([1.5, -0.0], BF16), TensorForm.NESTED),
        ([2**60 + 1], {}, np.array([2.0**60], np.float32), TensorForm.NESTED),
        ([], {}, np.zeros((0,), np.float32), TensorForm.NESTED),
        ([[], []], {}, np.zeros((2, 0), np.float32), TensorForm.NESTED),
        (
            {"shape": [1, 2, 2], "dtype": "float32", "data": [1, 2, 3, 4]},
            {},
            np.arange(1, 5, dtype=np.float32).reshape(1, 2, 2),
            TensorForm.FLAT,
        ),
        ({"shape": [2], "data": [1, 2]}, {}, np.array([1, 2], np.float32), TensorForm.FLAT),
        ({"shape": [2], "data": [1, 2]}, {"dtype": "float64"}, np.array([1.0, 2]), TensorForm.FLAT),
        (
            {"shape": [2], "dtype": "float16", "data": [1, 2]},
            {"dtype": "float16"},
            np.array([1, 2], np.float16),
            TensorForm.FLAT,
        ),
        ({"shape": [], "dtype": "float64", "data": [3]}, {}, np.array(3.0), TensorForm.FLAT),
        ({"shape": [2, 0, 3], "data": []}, {}, np.zeros((2, 0, 3), np.float32), TensorForm.FLAT),
        ({"shape": [1], "dtype": None, "data": [1]}, {}, np.ones(1, np.float32), TensorForm.FLAT),
    ],
)
def test_decodes(
    value: object, kwargs: dict[str, Any], expected: NDArray[Any], form: TensorForm
) -> None:
    array, got_form = decode_tensor(value, max_elements=LIMIT, **kwargs)
    assert got_form is form
    assert array.dtype == expected.dtype
    assert array.shape == expected.shape
    assert array.flags.c_contiguous and array.flags.writeable
    np.testing.assert_array_equal(bits(array), bits(expected))


def test_depth_32_is_the_maximum() -> None:
    array, _ = decode_tensor(nested(32), max_elements=LIMIT)
    assert array.shape == (1,) * 32


def test_overflow_is_judged_after_rounding() -> None:
    # 65519 rounds down to float16's largest finite value; 65520 rounds up to inf.
    assert decode_tensor([65519], dtype="float16", max_elements=LIMIT)[0][0] == 65504
    with pytest.raises(ValueOutOfRange):
        decode_tensor([65520], dtype="float16", max_elements=LIMIT)


# -- refused ---------------------------------------------------------------------------

_F32 = "largest finite magnitude 3.4028235e+38"


@pytest.mark.parametrize(
    ("value", "kwargs", "error", "fragment"),
    [
        (3.5, {}, RequestValidation, "'input' must be nested lists of numbers or an object"),
        ("abc", {}, RequestValidation, "got a string."),
        (None, {}, RequestValidation, "got null."),
        (True, {}, RequestValidation, "got a boolean."),
        (
            [[1, 2], [3]],
            {},
            RaggedTensor,
            "input[0] has length 2 but input[1] has length 1; lists at",
        ),
        (
            [[[1], [2]], [[3], [4, 5]]],
            {},
            RaggedTensor,
            "input[0][0] has length 1 but input[1][1] has length 2",
        ),
        ([[1, 2], 3], {}, RaggedTensor, "input[0] is a list but input[1] is a number."),
        ([1, [2]], {}, RaggedTensor, "input[0] is a number but input[1] is a list."),
        (
            [1.5, True],
            {},
            RequestValidation,
            "'input' must hold only numbers; input[1] is a boolean.",
        ),
        ([True, False], {}, RequestValidation, "input[0] is a boolean."),
        ([[1, "2"]], {}, RequestValidation, "input[0][1] is a string."),
        (["1"], {"dtype": "float32"}, RequestValidation, "input[0] is a string."),
        ([1, None], {}, RequestValidation, "input[1] is null."),
        ([[{"a": 1}]], {}, RequestValidation, "input[0][0] is an object."),
        ([[1], ["x"]], {}, RequestValidation, "input[1][0] is a string."),
        (nested(33), {}, InvalidShape, "deeper than the maximum rank 32"),
        (nested(100_000), {}, InvalidShape, "deeper than the maximum rank 32"),
        ([1e39], {}, ValueOutOfRange, f"input[0] = 1e+39 is out of range for float32 ({_F32})"),
        (
            [[1, 70000]],
            {"dtype": "float16"},
            ValueOutOfRange,
            "input[0][1] = 70000 is out of range for float16 (largest finite magnitude 65504).",
        ),
        ([-1e39], {"dtype": "bfloat16"}, ValueOutOfRange, "out of range for bfloat16"),
        ([10**400], {"dtype": "float64"}, ValueOutOfRange, "is out of range for float64"),
        ([float("nan")], {}, ValueOutOfRange, "input[0] = nan is not a finite number."),
        (
            [0.0] * (LIMIT + 1),
            {},
            TensorTooLarge,
            "Shape [10001] has 10001 elements; the limit is 10000.",
        ),
        ([[0.0] * 200] * 60, {}, TensorTooLarge, "Shape [60, 200] has 12000 elements"),
        ([1], {"dtype": "int8"}, UnsupportedDtype, "Unsupported dtype 'int8'"),
        (
            {"shape": [2, 3], "data": [1] * 5},
            {},
            ShapeMismatch,
            "shape [2, 3] needs 6 values, got 5.",
        ),
        ({"shape": [], "data": []}, {}, ShapeMismatch, "shape [] needs 1 values, got 0."),
        (
            {"shape": [2, -3], "data": []},
            {},
            InvalidShape,
            "Shape [2, -3] has a negative dimension.",
        ),
        ({"shape": "2", "data": []}, {}, InvalidShape, "must be a list of integers, not a string."),
        ({"shape": [2.0], "data": [1, 2]}, {}, InvalidShape, "[2.0] is not."),
        ({"shape": [True], "data": [1]}, {}, InvalidShape, "[True] is not."),
        ({"shape": [1] * 33, "data": [1]}, {}, InvalidShape, "Rank 33 is above the maximum of 32."),
        ({"shape": [2**40, 2**40], "data": []}, {}, TensorTooLarge, f"has {2**80} elements"),
        ({"shape": [100, 101], "data": []}, {}, TensorTooLarge, "has 10100 elements"),
        ({"shape": [2**32] * 3, "data": []}, {}, TensorTooLarge, f"has {2**96} elements"),
        ({"shape": [0, 10**30], "data": []}, {}, TensorTooLarge, "dimension above the limit"),
        ({"data": [1]}, {}, RequestValidation, "'input.shape' is required in the flat form."),
        ({"shape": [1]}, {}, RequestValidation, "'input.data' is required in the flat form."),
        ({"shape": [1], "data": [1], "foo": 1}, {}, RequestValidation, "Unknown key(s) 'foo'"),
        ({"shape": [1], "dtype": "int8", "data": [1]}, {}, UnsupportedDtype, "'int8'"),
        ({"shape": [1], "dtype": 5, "data": [1]}, {}, RequestValidation, "not a number."),
        (
            {"shape": [1], "dtype": "float16", "data": [1]},
            {"dtype": "float32"},
            RequestValidation,
            "'input.dtype' is 'float16' but 'dtype' is 'float32'; give one, or make them agree.",
        ),
        (
            {"shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]},
            {},
            ShapeMismatch,
            "must be a flat list of numbers in row-major order, but data[0] is a list",
        ),
        ({"shape": [1], "data": ["1"]}, {}, RequestValidation, "data[0] is a string."),
        ({"shape": [2], "data": [1, False]}, {}, RequestValidation, "data[1] is a boolean."),
        ({"shape": [1], "data": "abc"}, {}, RequestValidation, "list of numbers, not a string."),
        ({"shape": [1], "data": [1e39]}, {}, ValueOutOfRange, "data[0] = 1e+39 is out of range"),
    ],
)
def test_refusals(
    value: object, kwargs: dict[str, Any], error: type[ServiceError], fragment: str
) -> None:
    with pytest.raises(error) as caught:
        decode_tensor(value, max_elements=LIMIT, **kwargs)
    assert type(caught.value) is error
    assert fragment in caught.value.detail


# -- encoding and round trips ----------------------------------------------------------


def _zero_non_finite(values: NDArray[Any]) -> NDArray[Any]:
    # ml_dtypes' isfinite warns on some bfloat16 NaN bit patterns: that is expected here.
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(values), values, values.dtype.type(0))


def finite_arrays(min_dims: int) -> st.SearchStrategy[NDArray[Any]]:
    """Arrays of every dtype from random bits (subnormals, -0.0, extremes), non-finite zeroed."""

    def build(name: str) -> st.SearchStrategy[NDArray[Any]]:
        dtype = np.dtype(DTYPES[name])
        shapes = hnp.array_shapes(min_dims=min_dims, max_dims=5, min_side=0, max_side=4)
        raw = hnp.arrays(_UINT[dtype.itemsize], shapes)
        return raw.map(lambda r: _zero_non_finite(r.view(dtype)))

    return st.sampled_from(sorted(DTYPES)).flatmap(build)


@settings(max_examples=300, deadline=None)
@given(finite_arrays(min_dims=0))
def test_flat_round_trip_is_bit_exact(array: NDArray[Any]) -> None:
    wire = dumps_loads(encode_tensor(array, TensorForm.FLAT))
    decoded, form = decode_tensor(wire, max_elements=LIMIT)
    assert form is TensorForm.FLAT
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(bits(decoded), bits(array))


@settings(max_examples=300, deadline=None)
@given(finite_arrays(min_dims=1))
def test_nested_round_trip_is_bit_exact(array: NDArray[Any]) -> None:
    wire = dumps_loads(encode_tensor(array, TensorForm.NESTED))
    name = {np.dtype(v): k for k, v in DTYPES.items()}[array.dtype]
    decoded, form = decode_tensor(wire, dtype=name, max_elements=LIMIT)
    assert form is TensorForm.NESTED
    assert decoded.dtype == array.dtype
    # Nested lists end at the first zero-size dimension: [[], []] is all that (2, 0, 3) says.
    zero = array.shape.index(0) if 0 in array.shape else array.ndim - 1
    assert decoded.shape == array.shape[: zero + 1]
    np.testing.assert_array_equal(bits(decoded).reshape(-1), bits(array).reshape(-1))


@pytest.mark.parametrize("name", sorted(DTYPES))
@pytest.mark.parametrize("form", list(TensorForm))
def test_non_finite_values_become_null(name: str, form: TensorForm) -> None:
    array = np.array([1.0, np.nan, np.inf, -np.inf], dtype=DTYPES[name])
    body = orjson.dumps(encode_tensor(array, form), option=orjson.OPT_SERIALIZE_NUMPY)
    assert b"[1.0,null,null,null]" in body


def test_encode_shapes_for_orjson() -> None:
    array = np.array([[1.5, 2.0]], dtype=BF16)
    nested_out = encode_tensor(array, TensorForm.NESTED)
    assert isinstance(nested_out, np.ndarray) and nested_out.dtype == np.float32
    assert encode_tensor(np.array([1, 2], np.float16), TensorForm.NESTED).dtype == np.float16  # type: ignore[attr-defined]
    assert encode_tensor(np.array(2.5, np.float16), TensorForm.NESTED) == 2.5
    flat = encode_tensor(np.arange(6.0).reshape(2, 3), TensorForm.FLAT)
    assert isinstance(flat, dict) and flat["shape"] == [2, 3] and flat["dtype"] == "float64"
    body = orjson.dumps(encode_tensor(array, TensorForm.FLAT), option=orjson.OPT_SERIALIZE_NUMPY)
    assert body == b'{"shape":[1,2],"dtype":"bfloat16","data":[1.5,2.0]}'


def test_encode_accepts_strided_and_big_endian_arrays() -> None:
    array = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    body = orjson.dumps(encode_tensor(array, TensorForm.NESTED), option=orjson.OPT_SERIALIZE_NUMPY)
    assert body == b"[[0.0,2.0],[4.0,6.0],[8.0,10.0]]"


def test_encode_refuses_other_dtypes() -> None:
    with pytest.raises(UnsupportedDtype, match="'int64'"):
        encode_tensor(np.arange(3, dtype=np.int64), TensorForm.FLAT)


# -- arbitrary JSON --------------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
)
_JSON = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=40,
)
_FLATISH = st.fixed_dictionaries(
    {"shape": st.lists(st.integers(-2, 6), max_size=4) | _JSON, "data": st.lists(_SCALARS) | _JSON},
    optional={"dtype": st.sampled_from([*DTYPES, "int8", None, 3])},
)


@settings(max_examples=1000, deadline=None)
@given(_JSON | _FLATISH, st.sampled_from([None, *DTYPES, "int8"]))
def test_any_json_fails_only_with_service_errors(value: object, dtype: str | None) -> None:
    try:
        array, _ = decode_tensor(value, dtype=dtype, max_elements=LIMIT)
    except ServiceError:
        return
    assert array.dtype in {np.dtype(v) for v in DTYPES.values()}
    assert np.isfinite(array).all()


def _has_boolean(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is bool:
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _outcome(value: object, dtype: str | None, fast: bool) -> tuple[str, object]:
    try:
        array, form = decode_tensor(value, dtype=dtype, max_elements=LIMIT, no_booleans=fast)
    except ServiceError as exc:
        return type(exc).__name__, exc.detail
    return str(form), (array.dtype, array.shape, bits(array).tobytes())


@settings(max_examples=1000, deadline=None)
@given(
    _JSON | _FLATISH | finite_arrays(min_dims=1).map(lambda a: a.tolist()),
    st.sampled_from([None, *DTYPES, "int8"]),
)
def test_the_fast_path_decodes_and_fails_exactly_as_the_exact_path(
    value: object, dtype: str | None
) -> None:
    if _has_boolean(value):
        return  # the fast path is only taken when the body had no booleans
    assert _outcome(value, dtype, fast=True) == _outcome(value, dtype, fast=False)


@settings(max_examples=300, deadline=None)
@given(finite_arrays(min_dims=1), st.sampled_from(list(TensorForm)))
def test_the_fast_path_round_trips_bit_exactly(array: NDArray[Any], form: TensorForm) -> None:
    wire = dumps_loads(encode_tensor(array, form))
    name = {np.dtype(v): k for k, v in DTYPES.items()}[array.dtype]
    decoded, got = decode_tensor(wire, dtype=name, max_elements=LIMIT, no_booleans=True)
    assert got is form and decoded.dtype == array.dtype
    np.testing.assert_array_equal(bits(decoded).reshape(-1), bits(array).reshape(-1))


def test_json_numbers_round_once_to_bfloat16() -> None:
    # Just above the midpoint of 1.0 and the next bfloat16 (1.0078125): correctly rounded it
    # goes up; through float32 by round-to-nearest it would first land on the midpoint
    # 1.00390625 and then tie to even, down to 1.0.
    value = 1.00390625 + 2.0**-40
    for fast in (False, True):
        decoded, _ = decode_tensor([value], dtype="bfloat16", max_elements=LIMIT, no_booleans=fast)
        assert float(decoded[0]) == 1.0078125


@pytest.mark.parametrize(
    ("body", "envelope", "may"),
    [
        (b'{"training": true, "input": [1.0, 2.0]}', {"training": True}, False),
        (b'{"training": true, "input": [1.0, false]}', {"training": True}, True),
        (b'{"layer": "untrue", "input": [1.0]}', {"layer": "untrue"}, True),  # cautious
        (b'{"spec": {"trainable": false}, "input": [0]}', {"spec": {"trainable": False}}, False),
    ],
)
def test_may_hold_booleans(body: bytes, envelope: object, may: bool) -> None:
    assert may_hold_booleans(body, envelope) is may

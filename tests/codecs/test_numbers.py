"""The compiled list-of-numbers pass gives numpy's values bit for bit, and declines the rest."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.codecs import json_tensor, numbers
from service.codecs.json_tensor import decode_tensor
from service.errors import RequestValidation

pytestmark = pytest.mark.skipif(
    not numbers.available(), reason="service.codecs._numbers is not built here"
)

INT64 = st.integers(-(2**63), 2**63 - 1)
NUMBER = st.one_of(st.floats(allow_nan=False, allow_infinity=False), INT64)


def numpy_floats(items: list[Any]) -> np.ndarray:
    return np.asarray(items).astype(np.float64)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(NUMBER, max_size=64))
def test_floats_and_int64s_come_out_as_numpy_casts_them(items: list[Any]) -> None:
    out = numbers.floats(items)
    assert out is not None
    expected = numpy_floats(items) if items else np.empty(0)
    assert out.tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    "items",
    [[1.0, True], [False], [1.0, "2"], [None], [[1.0]], [2**63], [-(2**63) - 1], [1.0, 2**64 - 1]],
)
def test_anything_else_is_declined(items: list[Any]) -> None:
    assert numbers.floats(items) is None


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@settings(max_examples=60, deadline=None, derandomize=True)
@given(values=st.lists(NUMBER, min_size=1, max_size=32))
def test_a_flat_tensor_decodes_the_same_without_the_extension(
    dtype: str, values: list[Any]
) -> None:
    body = orjson.loads(orjson.dumps({"shape": [len(values)], "dtype": dtype, "data": values}))
    with_pass = _decoded(body)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(numbers, "_native", None)
        without = _decoded(body)
    assert type(with_pass) is type(without)
    if isinstance(without, np.ndarray):
        assert with_pass.dtype == without.dtype and with_pass.tobytes() == without.tobytes()
    else:
        assert str(with_pass) == str(without)  # the same refusal (a value out of range)


def _decoded(body: dict[str, Any]) -> Any:
    try:
        return decode_tensor(body, max_elements=1 << 20, no_booleans=True)[0]
    except Exception as exc:
        return exc


def test_the_fast_path_takes_the_compiled_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = numbers.floats

    def counted(items: list[Any]) -> Any:
        calls.append(len(items))
        return real(items)

    monkeypatch.setattr(json_tensor.numbers, "floats", counted)
    array, _ = decode_tensor(
        {"shape": [3], "data": [1.5, 2, 3.25]}, max_elements=16, no_booleans=True
    )
    assert calls == [3] and array.tolist() == [1.5, 2.0, 3.25]


@pytest.mark.parametrize("compiled", [True, False])
def test_booleans_in_a_tensor_are_still_refused(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not compiled:
        monkeypatch.setattr(numbers, "_native", None)
    with pytest.raises(RequestValidation, match="data\\[1\\] is a boolean"):
        decode_tensor({"shape": [2], "data": [1.0, True]}, max_elements=16)

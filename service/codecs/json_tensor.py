"""Tensors inside JSON bodies: nested lists, or the flat ``{"shape", "dtype", "data"}`` object.

The body is parsed by orjson before it gets here; this module turns the parsed ``input`` value
into an array and back. Speed matters (a 1M-element tensor is routine), so there is no per-value
Python bytecode: the structure is checked one nesting level at a time with C-speed builtins
(``map``, ``set``, ``itertools.chain``) and the numbers are converted by numpy in one call.

Why a type scan rather than trusting ``np.asarray(value)``'s dtype: numpy silently turns a
boolean mixed with numbers into 0/1 (``np.asarray([1.5, True])`` is ``[1.5, 1.0]``), so the
resulting dtype cannot tell ``true`` from ``1``. The scan (``set(map(type, leaves))``) costs
about as much as the conversion and catches strings, nulls, booleans and objects alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from enum import StrEnum
from itertools import chain
from typing import Any, Final, TypeAlias

import ml_dtypes
import numpy as np
from numpy.typing import NDArray

from service.codecs import numbers
from service.codecs.npy import check_shape, format_shape, short_repr
from service.core.bounds import MAX_RANK
from service.core.dtypes import DTYPES, dtype_name
from service.errors import (
    InvalidShape,
    RaggedTensor,
    RequestValidation,
    ShapeMismatch,
    UnsupportedDtype,
    ValueOutOfRange,
)

DEFAULT_DTYPE: Final = "float32"
# Names the place of a leaf (by its row-major index) in a message: input[1][0] or data[3].
_PathOf: TypeAlias = Callable[[int, Sequence[int]], str]
_NUMBER_TYPES: Final = frozenset({int, float})  # exact types: bool is an int subclass
# ml_dtypes.finfo, unlike np.finfo, also knows bfloat16 (and is untyped, hence the ignore).
_LARGEST: Final[dict[str, str]] = {
    name: f"{float(ml_dtypes.finfo(dt).max):.8g}"  # type: ignore[no-untyped-call]
    for name, dt in DTYPES.items()
}
_FLAT_KEYS: Final = frozenset({"shape", "dtype", "data"})
# The JSON word for each type orjson produces, for messages a client can act on.
_JSON_TYPES: Final[dict[type, str]] = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    type(None): "null",
}


class TensorForm(StrEnum):
    """Which JSON form a tensor came in; the answer uses the same one."""

    NESTED = "nested"
    FLAT = "flat"


def decode_tensor(
    value: object, *, dtype: str | None = None, max_elements: int, no_booleans: bool = False
) -> tuple[NDArray[Any], TensorForm]:
    """The array in a parsed JSON ``input`` value, and the form it came in.

    Nested lists take ``dtype`` (default float32); the flat object carries its own ``dtype``
    (default float32), which ``dtype`` may repeat but not contradict.

    ``no_booleans`` is the caller's promise that the JSON text held no ``true``/``false``
    inside the tensor (see ``may_hold_booleans``). Then numpy's own type discovery, which
    catches strings, nulls, objects and ragged lists but reads a boolean as 0 or 1, can stand
    in for the per-value type scan, and decoding costs one conversion. Anything unusual falls
    back to the exact path, which also words the errors.
    """
    if no_booleans:
        fast = _decode_fast(value, dtype, max_elements)
        if fast is not None:
            return fast
    if isinstance(value, dict):
        return _decode_flat(value, dtype, max_elements), TensorForm.FLAT
    if isinstance(value, list):
        name = _dtype_of(dtype if dtype is not None else DEFAULT_DTYPE, "dtype")
        shape, leaves = _nested_shape(value)
        check_shape(shape, max_elements)
        return _to_array(leaves, shape, name, _nested_path), TensorForm.NESTED
    raise RequestValidation(
        f"'input' must be nested lists of numbers or an object with 'shape', 'dtype' and "
        f"'data'; got {_json_type(value)}."
    )


def may_hold_booleans(body: bytes | bytearray | memoryview, envelope: object) -> bool:
    """Whether a JSON body may hold ``true``/``false`` outside ``envelope`` (its non-tensor
    fields): every JSON boolean is one of those literal tokens, so when the body has no more
    of them than the envelope holds booleans, the tensor has none. Strings that contain the
    words only make this answer "may", never a wrong "no"."""
    raw = bytes(body) if isinstance(body, memoryview) else body
    return raw.count(b"true") + raw.count(b"false") > _count_booleans(envelope)


def _count_booleans(value: object) -> int:
    """Booleans in a small parsed JSON value (the request envelope), iteratively."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        if type(item) is bool:
            count += 1
        elif type(item) is dict:
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return count


def _decode_fast(
    value: object, dtype: str | None, max_elements: int
) -> tuple[NDArray[Any], TensorForm] | None:
    """numpy's discovery and one cast, or None to take the exact path (which also words every
    error: this path never raises, so both paths fail alike)."""
    own = value.get("dtype") if isinstance(value, dict) else None
    if own is not None and dtype is not None and own != dtype:
        return None
    name = own if own is not None else dtype if dtype is not None else DEFAULT_DTYPE
    if type(name) is not str or name not in DTYPES:
        return None
    if isinstance(value, dict):
        shape, leaves, form = value.get("shape"), value.get("data"), TensorForm.FLAT
        if value.keys() - _FLAT_KEYS or type(leaves) is not list or type(shape) is not list:
            return None
        if not all(type(dim) is int and dim >= 0 for dim in shape):
            return None
        shape = tuple(shape)
    elif isinstance(value, list):
        shape, leaves, form = _probe_shape(value), value, TensorForm.NESTED
    else:
        return None
    if shape is None or len(shape) > MAX_RANK or math.prod(shape) > max_elements:
        return None
    if any(dim > max_elements for dim in shape):
        # A zero-size shape may still name dimensions numpy cannot represent, e.g.
        # [2**32, 2**32, 2**32, 0]: check_shape words that refusal on the exact path.
        return None
    wanted = (math.prod(shape),) if form is TensorForm.FLAT else shape
    out = _fast_array(leaves, shape, name, wanted)
    return None if out is None else (out, form)


def _fast_array(
    leaves: list[Any], shape: tuple[int, ...], name: str, wanted: tuple[int, ...]
) -> NDArray[Any] | None:
    """numpy's discovery of ``leaves`` (which must come out as ``wanted``) and one cast to
    ``name`` in ``shape``; None whenever the exact path must decide (and word the error)."""
    found = numbers.floats(leaves) if len(wanted) == 1 else None  # a flat list of numbers
    if found is None:
        try:
            found = np.asarray(leaves)
        except (ValueError, OverflowError):
            return None  # ragged, too deep, or a huge integer
    if found.dtype.kind not in "fiu" or found.shape != wanted:
        return None  # strings, nulls, objects, all-booleans, a flat list that is not flat
    with np.errstate(over="ignore"):
        # Integers go through float64 as on the exact path, so both round alike.
        out = _narrow(found.astype(np.float64, copy=False).reshape(shape), name)
    if not np.isfinite(out).all():
        return None  # a number out of range
    return out


def _probe_shape(value: list[Any]) -> tuple[int, ...] | None:
    """The shape nested lists claim along their first elements (checked by numpy after)."""
    shape: list[int] = []
    item: Any = value
    while type(item) is list:
        if len(shape) == MAX_RANK:
            return None
        shape.append(len(item))
        if not item:
            break
        item = item[0]
    return tuple(shape)


def _narrow(wide: NDArray[Any], name: str) -> NDArray[Any]:
    """Numbers (float64 or integers) as dtype ``name``, rounded once to nearest even.

    ml_dtypes converts float64 to bfloat16 through float32, which can round twice; rounding
    to float32 *to odd* first keeps enough information for the second rounding to be exact.
    """
    target = DTYPES[name]
    if name != "bfloat16":
        return wide.astype(target, copy=False)
    wide = wide.astype(np.float64, copy=False)
    single = wide.astype(np.float32)
    inexact = single.astype(np.float64) != wide
    if inexact.any():
        bits = single.view(np.uint32)
        even = (bits & 1) == 0
        fix = inexact & even & np.isfinite(single)
        away = np.abs(wide) > np.abs(single.astype(np.float64))
        bits[fix & away] += 1
        bits[fix & ~away] -= 1
    return single.astype(target)


def encode_tensor(array: NDArray[Any], form: TensorForm) -> object:
    """``array`` in ``form``, for ``orjson.dumps(..., option=orjson.OPT_SERIALIZE_NUMPY)``.

    Arrays go to orjson as C-contiguous native arrays, which it writes at C speed: float16,
    float32 and float64 as themselves (shortest round-tripping text), bfloat16 as float32
    (exact, since every bfloat16 is a float32). NaN and ±inf become ``null``: JSON has no
    token for them and orjson writes ``null``, which the decoder refuses, so a non-finite
    output does not round-trip. Nested lists cannot carry the dimensions after a zero-size one
    (``[[], []]`` is shape (2, 0) whatever followed) nor a rank-0 tensor (encoded as a bare
    number): the flat form carries any shape.
    """
    name = dtype_name(array.dtype)
    if name is None:
        raise UnsupportedDtype(array.dtype)
    wire = np.dtype(np.float32) if name == "bfloat16" else DTYPES[name]
    data = np.asarray(array, dtype=wire, order="C")
    if form is TensorForm.FLAT:
        return {"shape": list(data.shape), "dtype": name, "data": data.reshape(-1)}
    # orjson refuses 0-d arrays; a Python float (exact for all four dtypes) serializes alike.
    return data if data.ndim else float(data)


def _decode_flat(obj: dict[Any, Any], dtype: str | None, max_elements: int) -> NDArray[Any]:
    """The array in a flat ``{"shape", "dtype", "data"}`` object."""
    unknown = obj.keys() - _FLAT_KEYS
    if unknown:
        raise RequestValidation(
            f"Unknown key(s) {short_repr(sorted(unknown, key=short_repr))[1:-1]} in 'input'; "
            "the flat form has 'shape', 'dtype' and 'data'."
        )
    for key in ("shape", "data"):
        if key not in obj:
            raise RequestValidation(f"'input.{key}' is required in the flat form.")
    own = obj.get("dtype")
    if own is not None and dtype is not None and own != dtype:
        raise RequestValidation(
            f"'input.dtype' is {short_repr(own, 40)} but 'dtype' is {short_repr(dtype, 40)}; "
            "give one, or make them agree."
        )
    name = _dtype_of(
        own if own is not None else dtype if dtype is not None else DEFAULT_DTYPE, "input.dtype"
    )
    return decode_values(obj["data"], _flat_shape(obj["shape"]), name, max_elements=max_elements)


def decode_values(
    data: object,
    shape: tuple[int, ...],
    name: str,
    *,
    max_elements: int,
    no_booleans: bool = False,
    field: str = "input.data",
) -> NDArray[Any]:
    """A row-major flat list of numbers as an array of ``shape`` and dtype ``name`` (a key of
    DTYPES): the flat form's ``data``, and any protocol's flat tensor contents. Messages name
    the list ``field``; ``no_booleans`` as for ``decode_tensor``."""
    count = check_shape(shape, max_elements)
    if no_booleans and type(data) is list:
        fast = _fast_array(data, shape, name, (count,))
        if fast is not None:
            return fast
    if type(data) is not list:
        raise RequestValidation(f"'{field}' must be a list of numbers, not {_json_type(data)}.")
    kinds = set(map(type, data))
    if not kinds <= _NUMBER_TYPES:
        index, bad = _first_not_number(data)
        if type(bad) is list:
            raise ShapeMismatch(
                f"'{field}' must be a flat list of numbers in row-major order, but "
                f"data[{index}] is a list; put the dimensions in the shape."
            )
        raise RequestValidation(f"'{field}' must hold numbers; data[{index}] is {_json_type(bad)}.")
    if len(data) != count:
        raise ShapeMismatch(f"shape {format_shape(shape)} needs {count} values, got {len(data)}.")
    return _to_array(data, shape, name, _flat_path)


def _dtype_of(name: object, field: str) -> str:
    """A checked wire dtype name."""
    if type(name) is not str:
        raise RequestValidation(f"'{field}' must be a dtype name, not {_json_type(name)}.")
    if name not in DTYPES:
        raise UnsupportedDtype(name[:40])
    return name


def _flat_shape(shape: object) -> tuple[int, ...]:
    """The flat form's ``shape``: a list of at most MAX_RANK non-negative integers."""
    if type(shape) is not list:
        raise InvalidShape(f"'input.shape' must be a list of integers, not {_json_type(shape)}.")
    if len(shape) > MAX_RANK:
        raise InvalidShape(f"Rank {len(shape)} is above the maximum of {MAX_RANK}.")
    if any(type(dim) is not int for dim in shape):
        raise InvalidShape(f"'input.shape' must be a list of integers; {short_repr(shape)} is not.")
    if any(dim < 0 for dim in shape):
        raise InvalidShape(f"Shape {format_shape(shape)} has a negative dimension.")
    return tuple(shape)


def _nested_shape(value: list[Any]) -> tuple[tuple[int, ...], list[Any]]:
    """The shape and the row-major leaves of rectangular nested lists.

    Walks one nesting level at a time, not recursively, so even 100 000 levels of ``[[[...]]]``
    cost 33 cheap steps and no RecursionError.
    """
    shape = [len(value)]
    level: list[Any] = value
    while True:
        kinds = set(map(type, level))
        if kinds <= _NUMBER_TYPES:  # also the empty level of a zero-size tensor
            return tuple(shape), level
        if kinds != {list}:
            _refuse_level(level, kinds, shape)
        if len(shape) == MAX_RANK:
            raise InvalidShape(f"The nested lists are deeper than the maximum rank {MAX_RANK}.")
        lengths = set(map(len, level))
        if len(lengths) > 1:
            index = next(i for i, row in enumerate(level) if len(row) != len(level[0]))
            raise RaggedTensor(
                f"Ragged nested lists: {_nested_path(0, shape)} has length {len(level[0])} but "
                f"{_nested_path(index, shape)} has length {len(level[index])}; lists at the same "
                "depth must have the same length."
            )
        shape.append(lengths.pop())
        level = list(chain.from_iterable(level))


def _refuse_level(level: list[Any], kinds: set[type], shape: list[int]) -> None:
    """Raise the error for a nesting level that mixes lists and numbers or holds non-numbers."""
    if kinds <= _NUMBER_TYPES | {list}:
        first_is_list = type(level[0]) is list
        index = next(i for i, item in enumerate(level) if (type(item) is list) != first_is_list)
        raise RaggedTensor(
            f"Ragged nested lists: {_nested_path(0, shape)} is {_json_type(level[0])} but "
            f"{_nested_path(index, shape)} is {_json_type(level[index])}."
        )
    index = next(i for i, item in enumerate(level) if type(item) not in _NUMBER_TYPES | {list})
    raise RequestValidation(
        f"'input' must hold only numbers; {_nested_path(index, shape)} is "
        f"{_json_type(level[index])}."
    )


def _to_array(leaves: list[Any], shape: tuple[int, ...], name: str, where: _PathOf) -> NDArray[Any]:
    """Numbers (already type-checked) as an array of ``shape`` and dtype ``name``.

    Converts via float64, which holds every JSON number orjson produces exactly (integers
    beyond 2**53 round, as in any JSON reader), then casts once (rounding once, to nearest
    even) and inspects values only if the result has an inf: as JSON has no inf or NaN, that
    can only be a finite number that overflowed the target dtype.
    """
    try:
        wide = np.array(leaves, dtype=np.float64)
    # Only a Python int beyond float64's range gets here; orjson reads integers beyond 64 bits
    # as floats and refuses 1e400, so this guards other callers.
    except OverflowError:
        index = next(i for i, v in enumerate(leaves) if _overflows_float64(v))
        raise _out_of_range(leaves[index], where(index, shape), "float64") from None
    with np.errstate(over="ignore"):  # overflow is detected below, not warned about
        out = _narrow(wide.reshape(shape), name)
    finite = np.isfinite(out)
    if not finite.all():
        index = int(np.argmin(finite.reshape(-1)))
        raise _out_of_range(leaves[index], where(index, shape), name)
    return out


def _nested_path(index: int, shape: Sequence[int]) -> str:
    """Where the ``index``-th row-major item of a level of ``shape`` sits: ``input[1][0]``."""
    indices: list[int] = []
    for dim in reversed(shape):
        index, rest = divmod(index, dim)
        indices.append(rest)
    return "input" + "".join(f"[{i}]" for i in reversed(indices))


def _flat_path(index: int, shape: Sequence[int]) -> str:
    """Where the ``index``-th value of the flat form sits: ``data[3]``."""
    return f"data[{index}]"


def _first_not_number(values: list[Any]) -> tuple[int, object]:
    """The index and value of the first non-number (error path only, so a Python loop is fine)."""
    return next((i, v) for i, v in enumerate(values) if type(v) not in _NUMBER_TYPES)


def _overflows_float64(value: object) -> bool:
    """Whether a number (in practice a huge Python int) has no float64 value."""
    try:
        float(value)  # type: ignore[arg-type]
    except OverflowError:
        return True
    return False


def _out_of_range(value: object, path: str, name: str) -> ValueOutOfRange:
    """The error for a finite JSON number that overflows ``name``."""
    largest = _LARGEST[name]
    text = short_repr(value, 40)
    if isinstance(value, float) and not math.isfinite(value):  # only from callers other than orjson
        return ValueOutOfRange(f"{path} = {text} is not a finite number.")
    return ValueOutOfRange(
        f"{path} = {text} is out of range for {name} (largest finite magnitude {largest})."
    )


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, with an article: "a string", "null"."""
    return _JSON_TYPES.get(type(value), type(value).__name__)

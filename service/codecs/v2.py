"""The Open Inference Protocol's infer messages: JSON tensors and the binary data extension.

A request body is a JSON header, optionally followed by raw tensor bytes; the split point is
the ``Inference-Header-Content-Length`` header and never the Content-Type (tritonclient's sync
client sends none, its aio client sends ``application/octet-stream`` even for pure JSON).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Final

import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from service.codecs.json_tensor import decode_tensor, may_hold_booleans
from service.codecs.npy import check_shape, format_shape
from service.core.dtypes import DTYPES, FROM_V2, V2_DATATYPES, dtype_name
from service.errors import (
    InvalidInferenceHeader,
    InvalidInferRequest,
    InvalidJson,
    ShapeMismatch,
    UnsupportedDtype,
)

#: The outputs a layer model has: the result, and its keep mask on request.
OUTPUT: Final = "output"
MASK: Final = "mask"
OUTPUT_NAMES: Final = (OUTPUT, MASK)
_SEED_LIMIT: Final = 2**64
_OFFSET_LIMIT: Final = 2**62

Parameter = StrictBool | StrictInt | StrictFloat | StrictStr

#: An infer request, for the schema's examples and the route's documentation.
INFER_REQUEST_EXAMPLE: Final[dict[str, Any]] = {
    "id": "42",
    "parameters": {"training": True, "seed": 7},
    "inputs": [
        {"name": "input", "shape": [1, 1, 1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}
    ],
    "outputs": [{"name": "output"}, {"name": "mask"}],
}


class V2InputTensor(BaseModel):
    """One input of an infer request (its ``data`` is decoded apart, at C speed)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    shape: list[Annotated[int, Field(ge=0, strict=True)]]
    datatype: str
    parameters: dict[str, Parameter] | None = None


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    parameters: dict[str, Parameter] | None = None


class V2InferRequest(BaseModel):
    """An infer request's JSON header; tensors go in ``inputs[].data`` or the binary tail."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [INFER_REQUEST_EXAMPLE]},
    )

    id: str | None = None
    parameters: dict[str, Parameter] | None = Field(
        default=None, description="training (bool), seed (int), sample_offset (int)."
    )
    inputs: list[V2InputTensor]
    outputs: list[V2RequestedOutput] | None = None


class V2OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Parameter] | None = None
    data: list[Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Parameter] | None = None
    outputs: list[V2OutputTensor]


@dataclass(frozen=True, slots=True)
class WantedOutput:
    name: str
    binary: bool


@dataclass(frozen=True, slots=True)
class DecodedInfer:
    """What an infer request asks for, checked."""

    request_id: str | None
    tensor: NDArray[Any]
    training: bool
    seed: int | None
    sample_offset: int
    outputs: tuple[WantedOutput, ...]


def split_body(
    body: bytes | bytearray | memoryview, header_length: str | None
) -> tuple[memoryview, memoryview]:
    """The JSON header and the binary tail of a body, by ``Inference-Header-Content-Length``."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view) :]
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()):
        raise InvalidInferenceHeader(
            f"Inference-Header-Content-Length must be a non-negative integer, got "
            f"{header_length[:40]!r}."
        )
    length = int(text)
    if length == 0:
        raise InvalidInferenceHeader(
            "Inference-Header-Content-Length 0 (a raw binary request) is not supported: "
            "send a JSON header describing the input's shape and datatype."
        )
    if length > len(view):
        raise InvalidInferenceHeader(
            f"Inference-Header-Content-Length is {length}, but the body has only {len(view)} bytes."
        )
    return view[:length], view[length:]


def decode_infer(
    body: bytes | bytearray | memoryview, header_length: str | None, *, max_elements: int
) -> DecodedInfer:
    """Check an infer request and decode its one input tensor (JSON or binary)."""
    head, tail = split_body(body, header_length)
    try:
        payload = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"The inference header is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise InvalidInferRequest("The inference request must be a JSON object.")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInferRequest("A layer model takes exactly one input tensor in `inputs`.")
    data = inputs[0].pop("data", None)
    try:
        request = V2InferRequest.model_validate(payload)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInferRequest(f"{where}: {first['msg']}") from None
    spec = request.inputs[0]
    no_booleans = not may_hold_booleans(head, payload)
    tensor = _input_tensor(spec, data, tail, max_elements, no_booleans)
    params = request.parameters or {}
    return DecodedInfer(
        request_id=request.id,
        tensor=tensor,
        training=_bool_param(params, "training", False),
        seed=_int_param(params, "seed", _SEED_LIMIT),
        sample_offset=_int_param(params, "sample_offset", _OFFSET_LIMIT) or 0,
        outputs=_wanted_outputs(request, params),
    )


def _input_tensor(
    spec: V2InputTensor, data: object, tail: memoryview, max_elements: int, no_booleans: bool
) -> NDArray[Any]:
    name = FROM_V2.get(spec.datatype)
    if name is None:
        raise UnsupportedDtype(spec.datatype)
    shape = tuple(spec.shape)
    count = check_shape(shape, max_elements)
    size = (spec.parameters or {}).get("binary_data_size")
    if size is None:
        if len(tail):
            raise InvalidInferRequest(
                f"{len(tail)} bytes follow the inference header, but no input declares "
                "parameters.binary_data_size."
            )
        if data is None:
            raise InvalidInferRequest(f"Input {spec.name!r} has neither data nor binary data.")
        return _json_tensor(data, shape, name, max_elements, no_booleans)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInferRequest("parameters.binary_data_size must be a non-negative integer.")
    if data is not None:
        raise InvalidInferRequest(f"Input {spec.name!r} has both data and binary_data_size.")
    if size != len(tail):
        raise InvalidInferRequest(
            f"binary_data_size is {size}, but {len(tail)} bytes follow the inference header."
        )
    dtype = DTYPES[name].newbyteorder("<")
    if size != count * dtype.itemsize:
        raise ShapeMismatch(
            f"Shape {format_shape(shape)} of {spec.datatype} needs {count * dtype.itemsize} "
            f"bytes, but binary_data_size is {size}."
        )
    return np.frombuffer(tail, dtype=dtype).reshape(shape)


def _json_tensor(
    data: object, shape: tuple[int, ...], name: str, max_elements: int, no_booleans: bool
) -> NDArray[Any]:
    if isinstance(data, list) and data and isinstance(data[0], list):
        array, _form = decode_tensor(
            data, dtype=name, max_elements=max_elements, no_booleans=no_booleans
        )
        if array.shape != shape:
            raise ShapeMismatch(
                f"The nested data has shape {format_shape(array.shape)}, but the input "
                f"declares {format_shape(shape)}."
            )
        return array
    array, _form = decode_tensor(
        {"shape": list(shape), "dtype": name, "data": data},
        max_elements=max_elements,
        no_booleans=no_booleans,
    )
    return array


def _bool_param(params: dict[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInferRequest(f"Parameter {key!r} must be a boolean, got {value!r}.")
    return value


def _int_param(params: dict[str, Any], key: str, limit: int) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise InvalidInferRequest(
            f"Parameter {key!r} must be an integer in [0, {limit}), got {value!r}."
        )
    return value


def _wanted_outputs(request: V2InferRequest, params: dict[str, Any]) -> tuple[WantedOutput, ...]:
    default_binary = _bool_param(params, "binary_data_output", False)
    if not request.outputs:
        return (WantedOutput(OUTPUT, default_binary),)
    wanted = []
    for out in request.outputs:
        if out.name not in OUTPUT_NAMES:
            raise InvalidInferRequest(
                f"Unknown output {out.name!r}; a layer model has outputs {', '.join(OUTPUT_NAMES)}."
            )
        binary = _bool_param(out.parameters or {}, "binary_data", default_binary)
        wanted.append(WantedOutput(out.name, binary))
    return tuple(wanted)


def encode_infer(
    *,
    model_name: str,
    request_id: str | None,
    parameters: dict[str, Any],
    tensors: list[tuple[WantedOutput, NDArray[Any]]],
) -> tuple[list[bytes | memoryview], int | None]:
    """The response body, as parts to send in order (binary outputs are views of the arrays,
    not copies), and, when any output is binary, its JSON header's length."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes | memoryview] = []
    for wanted, array in tensors:
        entry: dict[str, Any] = {
            "name": wanted.name,
            "shape": list(array.shape),
            "datatype": _v2_datatype(array),
        }
        if wanted.binary:
            raw = _little_endian(array)
            entry["parameters"] = {"binary_data_size": raw.nbytes}
            blobs.append(raw)
        else:
            entry["data"] = _json_ready(array)
        outputs.append(entry)
    header: dict[str, Any] = {"model_name": model_name, "model_version": "1"}
    if request_id is not None:
        header["id"] = request_id
    header["parameters"] = parameters
    header["outputs"] = outputs
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return [head], None
    return [head, *blobs], len(head)


def _v2_datatype(array: NDArray[Any]) -> str:
    if array.dtype == np.bool_:
        return "BOOL"
    name = dtype_name(array.dtype)
    assert name is not None, array.dtype
    return V2_DATATYPES[name]


def _little_endian(array: NDArray[Any]) -> memoryview:
    """The array's bytes, row-major and little-endian, without a copy when already so."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    # Viewed as bytes first: numpy cannot export bfloat16 through the buffer protocol.
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)


def _json_ready(array: NDArray[Any]) -> NDArray[Any]:
    """A flat C-contiguous array orjson serializes; bfloat16 widens to float32 (exact)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    if dtype_name(flat.dtype) == "bfloat16":
        return flat.astype(np.float32)
    return flat

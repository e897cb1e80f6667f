"""The Open Inference Protocol's infer messages: JSON tensors and the binary data extension.

A request body is a JSON header, optionally followed by raw tensor bytes; the split point is
the ``Inference-Header-Content-Length`` header and never the Content-Type (tritonclient's sync
client sends none, its aio client sends ``application/octet-stream`` even for pure JSON).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final, NotRequired

import numpy as np
import orjson
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError
from typing_extensions import TypedDict

from service.codecs.json_tensor import decode_tensor, decode_values, may_hold_booleans
from service.codecs.npy import check_shape, format_shape
from service.core.dtypes import DTYPES, FROM_V2, V2_DATATYPES, dtype_name
from service.errors import (
    InvalidInferenceHeader,
    InvalidInferRequest,
    InvalidJson,
    RequestValidation,
    ShapeMismatch,
    UnsupportedDtype,
)
from service.inference import InferParameters, InferRequest, InferResult, Parameter
from service.params import INTEGRAL

#: The outputs a layer model has: the result, and its keep mask on request.
OUTPUT: Final = "output"
MASK: Final = "mask"
OUTPUT_NAMES: Final = (OUTPUT, MASK)

#: An infer request, for the schema's examples and the route's documentation.
INFER_REQUEST_EXAMPLE: Final[dict[str, Any]] = {
    "id": "42",
    "parameters": {"training": True, "seed": 7},
    "inputs": [
        {"name": "input", "shape": [1, 1, 1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}
    ],
    "outputs": [{"name": "output"}, {"name": "mask"}],
}


def _input_schema(schema: dict[str, Any]) -> None:
    """The document states ``data``, which the codec takes out before validating the rest."""
    schema["properties"]["data"] = {
        "type": "array",
        "description": "The values, flat in row-major order or nested as the shape; "
        "absent when parameters.binary_data_size places them in the binary tail.",
        "items": {"anyOf": [{"type": "number"}, {"type": "array"}]},
    }


class V2InputTensor(BaseModel):
    """One input of an infer request (its ``data`` is decoded apart, at C speed)."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=_input_schema)

    name: str
    shape: list[Annotated[int, Field(ge=0, strict=True), INTEGRAL]]
    # Any string validates, so that a datatype outside the table gets unsupported_dtype.
    datatype: str = Field(json_schema_extra={"enum": list(FROM_V2)})
    parameters: dict[str, Parameter] | None = None


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(
        description="An output of the model (a layer model: output, mask). With mc_statistics: "
        "a statistic OUT_<name> (OUT_mean), or an output OUT for each statistic of it."
    )
    parameters: dict[str, Parameter] | None = None


class V2InferRequest(BaseModel):
    """An infer request's JSON header; tensors go in ``inputs[].data`` or the binary tail."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={"examples": [INFER_REQUEST_EXAMPLE]},
    )

    id: str | None = None
    parameters: InferParameters | None = None
    inputs: list[V2InputTensor] = Field(
        min_length=1, description="The model's inputs by name (a layer model takes one)."
    )
    outputs: list[V2RequestedOutput] | None = None


class V2OutputTensor(TypedDict):
    """One output of an infer response: its data inline, or its size in the binary tail."""

    name: str
    shape: list[int]
    datatype: str
    parameters: NotRequired[dict[str, Parameter]]
    data: NotRequired[Any]


class V2InferResponse(TypedDict):
    """An infer response's JSON header (binary outputs follow it)."""

    model_name: str
    model_version: str
    id: NotRequired[str]
    parameters: dict[str, Parameter]
    outputs: list[V2OutputTensor]


@dataclass(frozen=True, slots=True)
class WantedOutput:
    name: str
    binary: bool


@dataclass(frozen=True, slots=True)
class DecodedInfer:
    """An infer request, checked, and how each wanted output goes back on this transport
    (``outputs`` empty: the model's default outputs, binary when binary_data_output says)."""

    request: InferRequest
    outputs: tuple[WantedOutput, ...]

    def binary(self, name: str) -> bool:
        for wanted in self.outputs:
            if wanted.name == name:
                return wanted.binary
        return self.request.parameters.binary_data_output


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
    """Check an infer request and decode its input tensors (JSON or binary), at most
    ``max_elements`` elements in all."""
    head, tail = split_body(body, header_length)
    key = bytes(head) if len(head) <= _REMEMBERED_BYTES else None
    header = None if key is None else _remembered.get(key)
    if header is None:
        header = _parse_header(head)
        if key is not None and header.binary_only:
            if len(_remembered) >= _REMEMBERED:
                _remembered.clear()  # a client cycling headers only costs its own parses
            _remembered[key] = header
    return header.decode(tail, max_elements)


@dataclass(frozen=True, slots=True)
class _Header:
    """An infer request's JSON header, parsed and checked: everything but the tensors."""

    request: V2InferRequest
    data: tuple[object, ...]  # each input's JSON data, None for a binary one
    no_booleans: bool
    parameters: InferParameters
    outputs: tuple[WantedOutput, ...]
    #: A refusal of the wanted outputs, raised after the inputs' (the order of the checks)
    outputs_refused: InvalidInferRequest | None = None

    @property
    def binary_only(self) -> bool:
        return self.outputs_refused is None and all(values is None for values in self.data)

    def decode(self, tail: memoryview, max_elements: int) -> DecodedInfer:
        """The request, with its tensors read from their JSON data or from ``tail``."""
        _check_binary_sizes(self.request.inputs, len(tail))
        tensors: dict[str, NDArray[Any]] = {}
        budget = max_elements
        offset = 0
        for index, (spec, values) in enumerate(zip(self.request.inputs, self.data, strict=True)):
            if spec.name in tensors:
                raise InvalidInferRequest(f"Input {spec.name!r} is given twice.")
            tensor, used = _input_tensor(
                spec, index, values, tail[offset:], budget, self.no_booleans
            )
            offset += used
            budget -= tensor.size
            tensors[spec.name] = tensor
        if offset != len(tail):
            raise InvalidInferRequest(
                f"{len(tail)} bytes follow the inference header, but the inputs' "
                f"parameters.binary_data_size account for {offset}."
            )
        if self.outputs_refused is not None:
            raise self.outputs_refused
        return DecodedInfer(
            request=InferRequest(
                request_id=self.request.id,
                inputs=tensors,
                parameters=self.parameters,
                outputs=tuple(w.name for w in self.outputs) or None,
            ),
            outputs=self.outputs,
        )


#: Clients send the same binary request header again and again (only the tail changes), so a
#: short one whose inputs are all binary is parsed and checked once. It is never mutated.
_REMEMBERED: Final = 64
_REMEMBERED_BYTES: Final = 4096
_remembered: dict[bytes, _Header] = {}


def _parse_header(head: memoryview) -> _Header:
    try:
        payload = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"The inference header is not valid JSON: {exc}.") from None
    if not isinstance(payload, dict):
        raise InvalidInferRequest("The inference request must be a JSON object.")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise InvalidInferRequest("`inputs` must be a non-empty list of input tensors.")
    data = tuple(entry.pop("data", None) for entry in inputs)
    try:
        request = V2InferRequest.model_validate(payload)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInferRequest(f"{where}: {first['msg']}.") from None
    # Only JSON data needs it, and counting the header's words costs a binary request more
    # than its tensor does.
    no_booleans = all(values is None for values in data) or not may_hold_booleans(head, payload)
    params = request.parameters or InferParameters()
    try:
        wanted = _wanted_outputs(request, params.binary_data_output)
    except InvalidInferRequest as exc:
        return _Header(request, data, no_booleans, params, (), exc)
    return _Header(request, data, no_booleans, params, wanted)


def _check_binary_sizes(inputs: list[V2InputTensor], tail: int) -> None:
    """The declared binary sizes must add up to the binary tail, before any is decoded."""
    sizes = [(i.parameters or {}).get("binary_data_size") for i in inputs]
    declared = [s for s in sizes if isinstance(s, int) and not isinstance(s, bool) and s >= 0]
    if not declared or len(declared) != sum(s is not None for s in sizes):
        return  # none binary, or a malformed size (refused with its input)
    total = sum(declared)
    if total != tail:
        what = (
            f"binary_data_size is {total}"
            if len(declared) == 1
            else (f"The inputs' binary_data_size add up to {total}")
        )
        raise InvalidInferRequest(f"{what}, but {tail} bytes follow the inference header.")


def _input_tensor(
    spec: V2InputTensor,
    index: int,
    data: object,
    tail: memoryview,
    max_elements: int,
    no_booleans: bool,
) -> tuple[NDArray[Any], int]:
    """Input ``index`` and how many bytes of the binary tail (from its start) it takes."""
    name = FROM_V2.get(spec.datatype)
    if name is None:
        raise UnsupportedDtype(spec.datatype)
    shape = tuple(spec.shape)
    count = check_shape(shape, max_elements)
    size = (spec.parameters or {}).get("binary_data_size")
    if size is None:
        if data is None:
            raise InvalidInferRequest(f"Input {spec.name!r} has neither data nor binary data.")
        return _json_tensor(data, shape, name, max_elements, no_booleans, index), 0
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInferRequest("parameters.binary_data_size must be a non-negative integer.")
    if data is not None:
        raise InvalidInferRequest(f"Input {spec.name!r} has both data and binary_data_size.")
    if size > len(tail):
        raise InvalidInferRequest(
            f"binary_data_size is {size}, but only {len(tail)} bytes of the binary data "
            f"are left for input {spec.name!r}."
        )
    dtype = DTYPES[name].newbyteorder("<")
    if size != count * dtype.itemsize:
        raise ShapeMismatch(
            f"Shape {format_shape(shape)} of {spec.datatype} needs {count * dtype.itemsize} "
            f"bytes, but binary_data_size is {size}."
        )
    return np.frombuffer(tail[:size], dtype=dtype).reshape(shape), size


def _json_tensor(
    data: object,
    shape: tuple[int, ...],
    name: str,
    max_elements: int,
    no_booleans: bool,
    index: int,
) -> NDArray[Any]:
    """An input's ``data``: flat in row-major order, or nested lists of the declared shape.

    The JSON tensor codec decodes the numbers; what it refuses as a malformed request is an
    invalid infer request here (400), in the protocol's words.
    """
    try:
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
        return decode_values(
            data,
            shape,
            name,
            max_elements=max_elements,
            no_booleans=no_booleans,
            field=f"inputs[{index}].data",
        )
    except RequestValidation as exc:
        raise InvalidInferRequest(
            exc.detail.replace("'input'", f"'inputs[{index}].data'")
        ) from None


def _bool_param(params: dict[str, Any], key: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidInferRequest(f"Parameter {key!r} must be a boolean, got {value!r}.")
    return value


def _wanted_outputs(request: V2InferRequest, default_binary: bool) -> tuple[WantedOutput, ...]:
    """The outputs the request names (which the model checks), each binary or JSON."""
    wanted = []
    for out in request.outputs or ():
        binary = _bool_param(out.parameters or {}, "binary_data", default_binary)
        wanted.append(WantedOutput(out.name, binary))
    return tuple(wanted)


def encode_infer(
    result: InferResult, binary: Callable[[str], bool]
) -> tuple[list[bytes | memoryview], int | None]:
    """The response body, as parts to send in order (binary outputs are views of the arrays,
    not copies), and, when any output is binary, its JSON header's length. ``binary(name)``
    says whether output ``name`` goes in the binary tail."""
    outputs: list[V2OutputTensor] = []
    blobs: list[bytes | memoryview] = []
    for name, array in result.outputs.items():
        entry: V2OutputTensor = {
            "name": name,
            "shape": list(array.shape),
            "datatype": _v2_datatype(array),
        }
        if binary(name):
            raw = _little_endian(array)
            entry["parameters"] = {"binary_data_size": raw.nbytes}
            blobs.append(raw)
        else:
            entry["data"] = _json_ready(array)
        outputs.append(entry)
    header: V2InferResponse = {
        "model_name": result.model_name,
        "model_version": result.model_version,
        "parameters": result.parameters,
        "outputs": outputs,
    }
    if result.request_id is not None:
        header["id"] = result.request_id
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return [head], None
    return [head, *blobs], len(head)


#: Output datatypes a model may answer beyond the float dtypes inputs take (argmax, masks).
_OTHER_OUTPUTS: Final[dict[str, str]] = {
    "bool": "BOOL",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
}


def _v2_datatype(array: NDArray[Any]) -> str:
    name = dtype_name(array.dtype)
    if name is not None:
        return V2_DATATYPES[name]
    other = _OTHER_OUTPUTS.get(array.dtype.newbyteorder("=").name)
    if other is None:
        raise InvalidInferRequest(f"An output of dtype {array.dtype} has no V2 datatype.")
    return other


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

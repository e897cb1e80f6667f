"""ModelInfer messages to the data plane's terms and back.

An input's tensor comes from ``raw_input_contents`` as a view of the bytes grpcio received
(service.grpc.wire cuts it out without a copy; the kernel then answers into a new buffer),
or from the typed ``contents`` (``fp32_contents``, ``fp64_contents``: the protocol gives FP16
and BF16 no typed field, so they travel raw only). Every check and message is the REST
codec's where the two protocols ask the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, TypeVar

import numpy as np
from google.protobuf.message import DecodeError, Message
from numpy.typing import NDArray
from pydantic import ValidationError as PydanticValidationError

from service.codecs.npy import check_shape, format_shape
from service.codecs.v2 import _little_endian, _v2_datatype
from service.core.dtypes import DTYPES, FROM_V2
from service.errors import InvalidInferRequest, ShapeMismatch, UnsupportedDtype
from service.grpc.proto import inference_pb2 as pb
from service.grpc.wire import field_header, split_field
from service.inference import InferParameters, InferRequest, InferResult

#: Field numbers of ModelInferRequest.raw_input_contents, ModelInferResponse.raw_output_contents.
RAW_INPUT_FIELD: Final = 7
RAW_OUTPUT_FIELD: Final = 6
#: Typed contents fields by datatype; the others travel raw only.
TYPED_FIELDS: Final = {"FP32": "fp32_contents", "FP64": "fp64_contents"}
_INT64_LIMIT: Final = 2**63

_M = TypeVar("_M", bound=Message)


def parse(kind: type[_M], data: bytes) -> _M:
    """``data`` as a ``kind`` message; a malformed one is the client's error."""
    try:
        message: _M = kind.FromString(data)
    except DecodeError:
        raise InvalidInferRequest(
            f"The request is not a valid {kind.DESCRIPTOR.full_name} message."
        ) from None
    return message


def parameter_value(param: pb.InferParameter) -> bool | int | float | str:
    which = param.WhichOneof("parameter_choice")
    if which is None:
        raise InvalidInferRequest("A request parameter has no value.")
    value: bool | int | float | str = getattr(param, which)
    return value


def set_parameter(param: pb.InferParameter, value: bool | int | float | str) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        if value >= _INT64_LIMIT:
            param.uint64_param = value
        else:
            param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = value


def read_infer(data: bytes) -> tuple[pb.ModelInferRequest, list[memoryview]]:
    """A ModelInfer call's message without its raw tensors, and those as views of ``data``."""
    head, raws = split_field(data, RAW_INPUT_FIELD)
    return parse(pb.ModelInferRequest, head), raws


def decode_infer(
    request: pb.ModelInferRequest, raws: Sequence[memoryview], *, max_elements: int
) -> InferRequest:
    """What a ModelInfer call asks for, checked: its inputs, at most ``max_elements``
    elements in all, raw (every input, in order) or typed."""
    if not request.inputs:
        raise InvalidInferRequest("`inputs` must be a non-empty list of input tensors.")
    if raws and len(raws) != len(request.inputs):
        raise InvalidInferRequest(
            f"raw_input_contents has {len(raws)} entries for {len(request.inputs)} inputs: "
            "send every input raw, or none."
        )
    try:
        params = InferParameters.model_validate(
            {key: parameter_value(value) for key, value in request.parameters.items()}
        )
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in ("parameters", *first["loc"]))
        raise InvalidInferRequest(f"{where}: {first['msg']}.") from None
    tensors: dict[str, NDArray[Any]] = {}
    budget = max_elements
    for index, spec in enumerate(request.inputs):
        if spec.name in tensors:
            raise InvalidInferRequest(f"Input {spec.name!r} is given twice.")
        tensor = _input_tensor(spec, index, raws[index] if raws else None, budget)
        budget -= tensor.size
        tensors[spec.name] = tensor
    return InferRequest(
        request_id=request.id or None,
        inputs=tensors,
        parameters=params,
        outputs=tuple(out.name for out in request.outputs) or None,
    )


def _input_tensor(
    spec: pb.ModelInferRequest.InferInputTensor,
    index: int,
    raw: memoryview | None,
    max_elements: int,
) -> NDArray[Any]:
    name = FROM_V2.get(spec.datatype)
    if name is None:
        raise UnsupportedDtype(spec.datatype)
    shape = tuple(spec.shape)
    if any(dim < 0 for dim in shape):
        raise InvalidInferRequest(
            f"inputs.{index}.shape: {format_shape(shape)} has a negative dimension."
        )
    count = check_shape(shape, max_elements)
    dtype = DTYPES[name].newbyteorder("<")
    if raw is not None:
        if spec.HasField("contents"):
            raise InvalidInferRequest(
                f"Input {spec.name!r} has both contents and raw_input_contents."
            )
        if len(raw) != count * dtype.itemsize:
            raise ShapeMismatch(
                f"Shape {format_shape(shape)} of {spec.datatype} needs {count * dtype.itemsize} "
                f"bytes, but raw_input_contents[{index}] has {len(raw)}."
            )
        # A read-only view of grpcio's bytes: the kernel answers into a buffer of its own.
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    field = TYPED_FIELDS.get(spec.datatype)
    if field is None:
        raise InvalidInferRequest(
            f"{spec.datatype} has no typed contents in the protocol: send input "
            f"{spec.name!r} in raw_input_contents."
        )
    values = getattr(spec.contents, field)
    if len(values) != count:
        raise ShapeMismatch(
            f"Shape {format_shape(shape)} needs {count} values, but contents.{field} has "
            f"{len(values)}."
        )
    return np.array(values, dtype=dtype).reshape(shape)


def encode_infer(result: InferResult) -> bytes:
    """A serialized ModelInferResponse, every output in ``raw_output_contents``: the small
    message by protobuf, then each tensor's bytes copied once, into the answer itself."""
    response = pb.ModelInferResponse(
        model_name=result.model_name,
        model_version=result.model_version,
        id=result.request_id or "",
    )
    for key, value in result.parameters.items():
        set_parameter(response.parameters[key], value)
    raws: list[bytes | memoryview] = []
    for name, array in result.outputs.items():
        response.outputs.add(name=name, datatype=_v2_datatype(array), shape=array.shape)
        raw = _little_endian(array)
        raws += [field_header(RAW_OUTPUT_FIELD, raw.nbytes), raw]
    return b"".join([response.SerializeToString(), *raws])


__all__ = ["decode_infer", "encode_infer", "parse", "read_infer"]

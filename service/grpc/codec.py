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
from service.codecs.v2 import (
    MASK,
    OUTPUT,
    OUTPUT_NAMES,
    DecodedInfer,
    InferParameters,
    WantedOutput,
    _little_endian,
    _v2_datatype,
)
from service.core.dtypes import DTYPES, FROM_V2
from service.errors import InvalidInferRequest, ShapeMismatch, UnsupportedDtype
from service.grpc.proto import inference_pb2 as pb
from service.grpc.wire import field_header, split_field

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
) -> DecodedInfer:
    """What a ModelInfer call asks for, checked."""
    if len(request.inputs) != 1:
        raise InvalidInferRequest("A layer model takes exactly one input tensor in `inputs`.")
    try:
        params = InferParameters.model_validate(
            {key: parameter_value(value) for key, value in request.parameters.items()}
        )
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in ("parameters", *first["loc"]))
        raise InvalidInferRequest(f"{where}: {first['msg']}.") from None
    tensor = _input_tensor(request.inputs[0], raws, max_elements)
    return DecodedInfer(
        request_id=request.id or None,
        tensor=tensor,
        parameters=params,
        outputs=_wanted_outputs(request),
    )


def _input_tensor(
    spec: pb.ModelInferRequest.InferInputTensor, raws: Sequence[memoryview], max_elements: int
) -> NDArray[Any]:
    name = FROM_V2.get(spec.datatype)
    if name is None:
        raise UnsupportedDtype(spec.datatype)
    shape = tuple(spec.shape)
    if any(dim < 0 for dim in shape):
        raise InvalidInferRequest(
            f"inputs.0.shape: {format_shape(shape)} has a negative dimension."
        )
    count = check_shape(shape, max_elements)
    dtype = DTYPES[name].newbyteorder("<")
    if raws:
        if len(raws) != 1:
            raise InvalidInferRequest(
                f"raw_input_contents has {len(raws)} entries; the one input needs one."
            )
        if spec.HasField("contents"):
            raise InvalidInferRequest(
                f"Input {spec.name!r} has both contents and raw_input_contents."
            )
        raw = raws[0]
        if len(raw) != count * dtype.itemsize:
            raise ShapeMismatch(
                f"Shape {format_shape(shape)} of {spec.datatype} needs {count * dtype.itemsize} "
                f"bytes, but raw_input_contents[0] has {len(raw)}."
            )
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


def _wanted_outputs(request: pb.ModelInferRequest) -> tuple[WantedOutput, ...]:
    if not request.outputs:
        return (WantedOutput(OUTPUT, binary=True),)
    for out in request.outputs:
        if out.name not in OUTPUT_NAMES:
            raise InvalidInferRequest(
                f"Unknown output {out.name!r}; a layer model has outputs {', '.join(OUTPUT_NAMES)}."
            )
    return tuple(WantedOutput(out.name, binary=True) for out in request.outputs)


def encode_infer(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    parameters: dict[str, bool | int | float | str],
    tensors: Sequence[tuple[str, NDArray[Any]]],
) -> bytes:
    """A serialized ModelInferResponse, every output in ``raw_output_contents``: the small
    message by protobuf, then each tensor's bytes copied once, into the answer itself."""
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request_id or ""
    )
    for key, value in parameters.items():
        set_parameter(response.parameters[key], value)
    raws: list[bytes | memoryview] = []
    for name, array in tensors:
        response.outputs.add(name=name, datatype=_v2_datatype(array), shape=array.shape)
        raw = _little_endian(array)
        raws += [field_header(RAW_OUTPUT_FIELD, raw.nbytes), raw]
    return b"".join([response.SerializeToString(), *raws])


__all__ = ["MASK", "OUTPUT", "decode_infer", "encode_infer", "parse", "read_infer"]

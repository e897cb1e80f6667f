"""The gRPC codec in process: the status table covers every service error, the checked-in
generated module is protoc's output for the .proto, and the hand-cut raw fields read and
write what protobuf itself does."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from service import errors
from service.grpc import codec, generate
from service.grpc.status import STATUS_CODES, status_code
from service.grpc.wire import split_field
from service.inference import InferResult


def every_error() -> list[type[errors.ServiceError]]:
    found, todo = [], [errors.ServiceError]
    while todo:
        kind = todo.pop()
        found.append(kind)
        todo.extend(kind.__subclasses__())
    return found


@pytest.mark.parametrize("kind", every_error(), ids=lambda kind: kind.__name__)
def test_every_client_error_has_a_status_of_its_own(kind: type[errors.ServiceError]) -> None:
    if kind.status >= 500 and kind.status not in (503, 507):
        assert kind.status not in STATUS_CODES  # a server fault: INTERNAL
        return
    assert kind.status in STATUS_CODES, f"{kind.__name__} ({kind.status}) has no gRPC status"
    assert STATUS_CODES[kind.status] not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.LayerNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.InvalidInferRequest("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.UnsupportedDtype("INT8"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.Unauthorized(), grpc.StatusCode.UNAUTHENTICATED),
        (errors.Forbidden(), grpc.StatusCode.PERMISSION_DENIED),
        (errors.BodyTooLarge(10), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.TensorTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.StoreUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.ServiceError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_codes(error: errors.ServiceError, code: grpc.StatusCode) -> None:
    assert status_code(error) == code


def test_the_checked_in_module_is_what_protoc_writes(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    for name in ("inference_pb2.py", "inference_pb2.pyi"):
        fresh = tmp_path / "service" / "grpc" / "proto" / name
        assert fresh.read_text() == (generate.PROTO_DIR / name).read_text(), name


def test_the_messages_are_the_protocols_field_for_field() -> None:
    """tritonclient's own copy of the protocol reads what ours writes, and back."""
    from service.grpc.proto import inference_pb2 as ours

    ours_request = ours.ModelInferRequest(model_name="m", model_version="1", id="i")
    ours_request.parameters["seed"].uint64_param = 2**64 - 1
    tensor = ours_request.inputs.add(name="input", datatype="FP32", shape=[1, 2])
    tensor.contents.fp32_contents.extend([1.5, -2.0])
    ours_request.outputs.add(name="mask")
    ours_request.raw_input_contents.append(b"\x01\x02")
    theirs = service_pb2.ModelInferRequest.FromString(ours_request.SerializeToString())
    assert theirs.SerializeToString(deterministic=True) == ours_request.SerializeToString(
        deterministic=True
    )
    assert theirs.parameters["seed"].uint64_param == 2**64 - 1
    assert list(theirs.inputs[0].contents.fp32_contents) == [1.5, -2.0]


@given(
    raws=st.lists(st.binary(max_size=300), max_size=4),
    name=st.text(max_size=20),
    request_id=st.text(max_size=20),
)
def test_split_field_cuts_out_exactly_the_raw_inputs(
    raws: list[bytes], name: str, request_id: str
) -> None:
    request = service_pb2.ModelInferRequest(model_name=name, id=request_id)
    request.inputs.add(name="input", datatype="FP32", shape=[len(raws)])
    request.raw_input_contents.extend(raws)
    head, views = split_field(request.SerializeToString(), codec.RAW_INPUT_FIELD)
    assert [bytes(v) for v in views] == raws
    rest = service_pb2.ModelInferRequest.FromString(head)
    assert list(rest.raw_input_contents) == []
    request.ClearField("raw_input_contents")
    assert rest == request


def test_a_truncated_message_is_invalid() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.raw_input_contents.append(b"\x00" * 100)
    data = request.SerializeToString()[:-10]
    with pytest.raises(errors.InvalidInferRequest):
        codec.read_infer(data)


def test_encoded_answers_read_back_with_tritonclient() -> None:
    output = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    mask = np.array([[True, False, True]] * 2)
    result = InferResult(
        "m", "1", "id-1", {"seed": 2**63, "training": True}, {"output": output, "mask": mask}
    )
    response = service_pb2.ModelInferResponse.FromString(codec.encode_infer(result))
    assert response.parameters["seed"].uint64_param == 2**63
    assert response.parameters["training"].bool_param
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("output", "FP16", [2, 3, 4]),
        ("mask", "BOOL", [2, 3]),
    ]
    assert response.raw_output_contents[0] == output.tobytes()
    assert response.raw_output_contents[1] == mask.tobytes()

"""The V2 codec remembers a binary request's header: each request is still checked whole."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.codecs.v2 import decode_infer
from service.errors import InvalidInferRequest, ShapeMismatch, TensorTooLarge

LIMIT = 1 << 20


def binary_request(x: np.ndarray, *, size: int | None = None, **extra: object) -> bytes:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes if size is None else size},
                }
            ],
            "parameters": {"training": True, "seed": 7},
            **extra,
        }
    )
    return header


def test_a_remembered_header_reads_each_requests_own_tail() -> None:
    first, second = np.arange(8, dtype=np.float32), -np.arange(8, dtype=np.float32)
    header = binary_request(first)
    for x in (first, second, first):  # the same header bytes: parsed once, remembered after
        decoded = decode_infer(header + x.tobytes(), str(len(header)), max_elements=LIMIT)
        np.testing.assert_array_equal(decoded.request.inputs["input"], x)
        assert decoded.request.parameters.seed == 7 and decoded.request.parameters.training


def test_a_remembered_header_still_checks_the_tail_and_the_limit() -> None:
    x = np.zeros(8, dtype=np.float32)
    header = binary_request(x)
    decode_infer(header + x.tobytes(), str(len(header)), max_elements=LIMIT)
    with pytest.raises(InvalidInferRequest, match="28 bytes follow"):
        decode_infer(header + x.tobytes()[:-4], str(len(header)), max_elements=LIMIT)
    with pytest.raises(InvalidInferRequest):
        decode_infer(header + x.tobytes() + b"\0" * 4, str(len(header)), max_elements=LIMIT)
    with pytest.raises(TensorTooLarge):
        decode_infer(header + x.tobytes(), str(len(header)), max_elements=7)


def test_refusals_come_in_the_same_order_every_time() -> None:
    x = np.zeros(8, dtype=np.float32)
    # A wrong binary size and a bad output parameter: the input is refused first, each time.
    header = binary_request(
        x, size=12, outputs=[{"name": "output", "parameters": {"binary_data": 1}}]
    )
    tail = b"\0" * 12
    for _ in range(2):
        with pytest.raises(ShapeMismatch):
            decode_infer(header + tail, str(len(header)), max_elements=LIMIT)
    header = binary_request(x, outputs=[{"name": "output", "parameters": {"binary_data": 1}}])
    for _ in range(2):
        with pytest.raises(InvalidInferRequest, match="binary_data"):
            decode_infer(header + x.tobytes(), str(len(header)), max_elements=LIMIT)

"""The exact division of a portable graph, on its own: every float32 significand, the
subnormals, the edges of the range, and the probe that picks a runtime's own Div."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from service.onnx import division
from service.onnx.builder import GraphBuilder
from tests.onnx import runtimes

ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}
#: Keep factors that x * (1/keep) gets wrong, among them ones whose first correction step
#: alone (the rounding of q + residual / keep) missed one significand each.
KEEPS = [np.float32(0.7), np.float32(0.24648689), np.float32(0.839348), np.float32(0.030074587)]


def model(keep: np.floating[Any], build: Callable[[GraphBuilder], str], out: int) -> bytes:
    g = GraphBuilder("d")
    result = build(g)
    elem = ELEM[keep.dtype]
    graph = helper.make_graph(
        g.nodes,
        "division",
        [helper.make_tensor_value_info("X", elem, ["N"])],
        [helper.make_tensor_value_info(result, out, None)],
        initializer=g.initializers,
    )
    opsets = [helper.make_opsetid("", 21)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10).SerializeToString()


def corrected(keep: np.floating[Any]) -> bytes:
    return model(keep, lambda g: division.corrected(g, "X", keep), ELEM[keep.dtype])


def same_bits(got: NDArray[Any], want: NDArray[Any]) -> bool:
    nan = np.isnan(want)
    return bool(np.array_equal(np.isnan(got), nan)) and bool(
        np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    )


def every_significand() -> NDArray[np.float32]:
    return (np.arange(1 << 23, dtype=np.uint32) | np.uint32(127 << 23)).view(np.float32)


def edges() -> NDArray[np.float32]:
    """Every positive subnormal, some negated, random bit patterns of every exponent, and the
    values where the scaling switches, overflows and the specials."""
    subnormals = np.arange(1, 1 << 23, dtype=np.uint32).view(np.float32)
    patterns = np.random.default_rng(5).integers(0, 2**32, 1 << 20, dtype=np.uint64)
    info = np.finfo(np.float32)
    special = [
        0.0,
        -0.0,
        np.inf,
        -np.inf,
        np.nan,
        info.max,
        -info.max,
        info.tiny,
        2.0**64,
        2.0**-60,
        np.nextafter(np.float32(2.0**64), np.float32(np.inf)),
    ]
    return np.concatenate(
        [
            subnormals,
            -subnormals[::7],
            patterns.astype(np.uint32).view(np.float32),
            np.array(special, np.float32),
        ]
    )


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "tract"])
@pytest.mark.parametrize("keep", KEEPS, ids=str)
def test_every_significand_is_divided_exactly(runtime: str, keep: np.float32) -> None:
    """Scaling by powers of two is exact in the range the steps run in, so 2**23
    significands stand for every normal quotient of this keep."""
    x = every_significand()
    y = runtimes.PYTHON_RUNTIMES[runtime](corrected(keep))({"X": x})[0]
    assert same_bits(y, x / keep)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "tract"])
def test_subnormals_overflow_and_specials_are_divided_exactly(runtime: str) -> None:
    x = edges()
    for keep in [np.float32(0.3), np.float32(1 - 2**-24), np.float32(2**-25 * 3)]:
        with np.errstate(all="ignore"):
            want = x / keep
        assert same_bits(runtimes.PYTHON_RUNTIMES[runtime](corrected(keep))({"X": x})[0], want)


def test_float64_is_divided_exactly_near_1_too() -> None:
    """onnxruntime drops a Mul by a float64 constant within float32's epsilon of 1: the steps
    scale such a factor by two (1 - 1e-9 gave x itself before)."""
    x = np.random.default_rng(1).uniform(1, 2, 1 << 16)
    for keep in [np.float64(1 - 1e-9), np.float64(0.7)]:
        for runtime in ["onnxruntime", "onnx.reference", "tract"]:
            y = runtimes.PYTHON_RUNTIMES[runtime](corrected(keep))({"X": x})[0]
            assert np.array_equal(y.view(np.uint64), (x / keep).view(np.uint64))


def test_the_probe_takes_the_runtimes_own_div_only_where_it_divides_exactly(
    web: runtimes.WebRunner,
) -> None:
    keep = np.float32(0.7)
    found = division.probes(keep)
    assert found is not None and np.all(found * (np.float32(1) / keep) != found / keep)
    probe = model(keep, lambda g: division.divides_exactly(g, found, keep, "X"), TensorProto.BOOL)
    x = {"X": np.ones(3, np.float32)}
    exact = {name: bool(load(probe)(x)[0]) for name, load in runtimes.PYTHON_RUNTIMES.items()}
    exact["onnxruntime-web"] = bool(web(probe)(x)[0])
    assert exact == {
        "onnxruntime": True,
        "onnx.reference": True,
        "onnxruntime-web": True,
        "openvino": False,
        "tract": False,
    }


def test_a_limbs_carry_is_truncated_exactly_by_every_runtime(web: runtimes.WebRunner) -> None:
    """The stream takes a carry as ``t / 2**b`` for 0 <= t < 2**24 (service.onnx.stream):
    every such t on the Python runtimes, a sample of 2**20 on onnxruntime-web."""
    t = np.arange(1 << 24, dtype=np.int32)
    for radix in (2048, 512):
        graph = helper.make_graph(
            [helper.make_node("Div", ["T", "radix"], ["Q"])],
            "carry",
            [helper.make_tensor_value_info("T", TensorProto.INT32, ["N"])],
            [helper.make_tensor_value_info("Q", TensorProto.INT32, None)],
            initializer=[numpy_helper.from_array(np.array(radix, np.int32), "radix")],
        )
        opsets = [helper.make_opsetid("", 21)]
        carry = helper.make_model(graph, opset_imports=opsets, ir_version=10).SerializeToString()
        for load in runtimes.PYTHON_RUNTIMES.values():
            assert np.array_equal(load(carry)({"T": t})[0], t // radix)
        sample = t[np.random.default_rng(radix).integers(0, 1 << 24, 1 << 20)]
        assert np.array_equal(web(carry)({"T": sample})[0], sample // radix)

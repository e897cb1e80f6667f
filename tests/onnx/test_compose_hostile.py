"""Hostile models given to compose: each refused with its own error, before any work it could
make expensive, and no file a model names is ever opened."""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from google.protobuf.internal.encoder import _VarintBytes
from onnx import TensorProto, helper, numpy_helper

from service.compose import RECORD_KEY, compose
from service.compose.wire import count_nodes
from service.errors import (
    AmbiguousInsertionPoint,
    ExternalData,
    InvalidInsertionPoint,
    InvalidModel,
    InvalidTrainingMode,
    ModelOpsetUnsupported,
    ServiceError,
    TensorRankMismatch,
    TooManyNodes,
    UnknownTensor,
    UnsupportedOnnxDtype,
)
from service.onnx.opsets import supported_opsets
from tests.onnx.torch_models import spec

SD2D = spec()
MAX_NODES = 10_000


def relu_model(
    *,
    opset: int = 17,
    elem: int = TensorProto.FLOAT,
    dims: list[int | str] | None = None,
    extra_inputs: Sequence[onnx.ValueInfoProto] = (),
    initializers: Sequence[TensorProto] = (),
    outputs: int = 1,
) -> onnx.ModelProto:
    """X -> Relu -> Y (and Relu -> Z for a second output)."""
    dims = ["N", 3, 4, 4] if dims is None else dims
    nodes = [helper.make_node("Relu", ["X"], ["Y"], name="relu")]
    outs = [helper.make_tensor_value_info("Y", elem, dims)]
    if outputs == 2:
        nodes.append(helper.make_node("Relu", ["X"], ["Z"], name="relu2"))
        outs.append(helper.make_tensor_value_info("Z", elem, dims))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("X", elem, dims), *extra_inputs],
        outs,
        initializer=list(initializers),
    )
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def refused(model: bytes | onnx.ModelProto, error: type[ServiceError], **kwargs: Any) -> str:
    data = model if isinstance(model, bytes) else model.SerializeToString()
    kwargs.setdefault("seed", 7)
    kwargs.setdefault("max_nodes", MAX_NODES)
    with pytest.raises(error) as caught:
        compose(data, SD2D, **kwargs)
    assert type(caught.value) is error
    return caught.value.detail


def test_the_plain_model_composes() -> None:
    # The base of every hostile variant below is itself fine.
    composed = onnx.load_from_string(
        compose(relu_model().SerializeToString(), SD2D, seed=1, max_nodes=10)
    )
    assert [value.name for value in composed.graph.input] == ["X", "training_mode"]


@pytest.mark.parametrize(
    "body",
    [b"", b"hello, world", b"\xff" * 64, b"\x08", bytes(range(256)), b"\x3a\x05\x0a\x03abc"],
)
def test_bytes_that_are_not_a_model(body: bytes) -> None:
    refused(body, InvalidModel)


def test_a_model_failing_the_checker() -> None:
    model = relu_model()
    model.graph.node[0].input[0] = "nowhere"  # reads a tensor nothing defines
    assert "onnx.checker" in refused(model, InvalidModel)


def test_a_model_failing_shape_inference() -> None:
    model = relu_model()
    model.graph.node.append(helper.make_node("Add", ["Y", "X"], ["W"]))
    model.graph.output.append(helper.make_tensor_value_info("W", TensorProto.INT64, [2]))
    refused(model, InvalidModel)


def _external(name: str, location: Path) -> TensorProto:
    tensor = numpy_helper.from_array(np.ones((3, 1, 1), np.float32), name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in [("location", str(location)), ("offset", "0"), ("length", "12")]:
        tensor.external_data.add(key=key, value=value)
    return tensor


def _with_external(where: str, location: Path) -> onnx.ModelProto:
    model = relu_model()
    graph = model.graph
    tensor = _external("w", location)
    if where == "initializer":
        graph.initializer.append(tensor)
    elif where == "sparse_initializer":
        sparse = helper.make_sparse_tensor(tensor, numpy_helper.from_array(np.array([0]), "i"), [3])
        graph.sparse_initializer.append(sparse)
    elif where == "attribute":
        graph.node.append(helper.make_node("Constant", [], ["c"], value=tensor))
    elif where == "subgraph":
        branch = helper.make_graph(
            [helper.make_node("Constant", [], ["b"], value=tensor)],
            "then",
            [],
            [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)],
        )
        graph.node.append(
            helper.make_node("If", ["cond"], ["o"], then_branch=branch, else_branch=branch)
        )
        graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    elif where == "function":
        body = [helper.make_node("Constant", [], ["k"], value=tensor)]
        function = helper.make_function(
            "com.example", "K", [], ["k"], body, [helper.make_opsetid("", 17)]
        )
        model.functions.append(function)
        model.opset_import.append(helper.make_opsetid("com.example", 1))
        graph.node.append(helper.make_node("K", [], ["kk"], domain="com.example"))
    return model


@pytest.fixture
def opened() -> Iterator[list[str]]:
    """The paths this process opens while the test runs (Python's audit events)."""
    paths: list[str] = []
    recording = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if recording[0] and event in {"open", "os.listdir", "os.scandir"} and args:
            paths.append(str(args[0]))

    sys.addaudithook(hook)  # hooks cannot be removed: this one goes quiet after the test
    yield paths
    recording[0] = False


@pytest.mark.parametrize(
    "where", ["initializer", "sparse_initializer", "attribute", "subgraph", "function"]
)
def test_external_data_anywhere_is_refused_and_never_read(
    where: str, tmp_path: Path, opened: list[str]
) -> None:
    target = tmp_path / "weights.bin"
    target.write_bytes(np.ones(3, np.float32).tobytes())
    model = _with_external(where, target).SerializeToString()
    opened.clear()
    detail = refused(model, ExternalData)
    assert "'w'" in detail
    assert not [path for path in opened if "weights" in path]
    assert target.stat().st_size == 12


@pytest.mark.parametrize("opset", [11, 12, "newest+1"])
def test_an_opset_outside_what_onnxruntime_loads(opset: int | str) -> None:
    version = supported_opsets().stop if opset == "newest+1" else opset
    assert isinstance(version, int)
    detail = refused(relu_model(opset=version), ModelOpsetUnsupported)
    assert f"opset {version}" in detail


def test_a_model_without_the_default_opset() -> None:
    model = relu_model()
    model.opset_import[0].domain = "com.example"
    model.graph.node[0].domain = "com.example"  # a custom op: the checker lets it pass
    assert "no default-domain opset" in refused(model, ModelOpsetUnsupported)


@pytest.mark.parametrize(
    ("value", "initializer"),
    [
        (helper.make_tensor_value_info("training_mode", TensorProto.FLOAT, []), None),
        (helper.make_tensor_value_info("training_mode", TensorProto.BOOL, [1]), None),
        (
            helper.make_tensor_value_info("training_mode", TensorProto.BOOL, []),
            numpy_helper.from_array(np.array(True), "training_mode"),
        ),
    ],
    ids=["float", "shape-1", "defaults-true"],
)
def test_a_training_mode_of_another_kind(
    value: onnx.ValueInfoProto, initializer: TensorProto | None
) -> None:
    model = relu_model(extra_inputs=[value], initializers=[initializer] if initializer else [])
    refused(model, InvalidTrainingMode)


def test_training_mode_computed_by_a_node() -> None:
    model = relu_model()
    model.graph.node.append(helper.make_node("Constant", [], ["training_mode"], value_int=1))
    refused(model, InvalidTrainingMode)


def test_a_rank_the_layer_does_not_take() -> None:
    detail = refused(relu_model(dims=["N", 8]), TensorRankMismatch)
    assert detail == (
        "Layer \"sd\" takes inputs of rank 4, but the model's tensor 'Y' has rank 2: shape (N, 8)."
    )


def test_an_unknown_tensor() -> None:
    assert "'nope'" in refused(relu_model(), UnknownTensor, after=["nope"])


def test_a_tensor_of_a_subgraph_only_is_unknown() -> None:
    model = _with_external("subgraph", Path("/nonexistent"))
    model.graph.node[-1].attribute[0].g.node[0].attribute[0].t.CopyFrom(
        numpy_helper.from_array(np.ones(1, np.float32), "w")
    )
    model.graph.node[-1].attribute[1].g.CopyFrom(model.graph.node[-1].attribute[0].g)
    refused(model, UnknownTensor, after=["b"])


def test_several_outputs_and_no_after() -> None:
    assert "'Y', 'Z'" in refused(relu_model(outputs=2), AmbiguousInsertionPoint)


def test_the_same_tensor_twice_and_an_input_that_is_an_output() -> None:
    refused(relu_model(), InvalidInsertionPoint, after=["Y", "Y"])
    model = relu_model()
    model.graph.output.append(helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3, 4, 4]))
    refused(model, InvalidInsertionPoint, after=["X"])


@pytest.mark.parametrize("elem", [TensorProto.INT64, TensorProto.BFLOAT16])
def test_a_tensor_of_a_dtype_the_layer_cannot_run_in(elem: int) -> None:
    model = relu_model(elem=elem, opset=21)
    refused(model, UnsupportedOnnxDtype)


def test_a_record_that_is_not_ours() -> None:
    model = relu_model()
    model.metadata_props.add(key=RECORD_KEY, value='{"version": 9, "layers": []}')
    assert RECORD_KEY in refused(model, InvalidModel)


def _million_nodes() -> bytes:
    node = helper.make_node("Relu", ["X"], ["Y"]).SerializeToString()
    entry = _VarintBytes(1 << 3 | 2) + _VarintBytes(len(node)) + node
    graph = entry * 1_000_000
    return b"\x08\x08" + _VarintBytes(7 << 3 | 2) + _VarintBytes(len(graph)) + graph


def test_a_million_nodes_are_refused_from_the_bytes_in_bounded_memory() -> None:
    body = _million_nodes()
    tracemalloc.start()
    try:
        with pytest.raises(TooManyNodes) as caught:
            compose(body, SD2D, seed=1, max_nodes=MAX_NODES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert f"more than {MAX_NODES} nodes" in caught.value.detail
    assert peak < 256 * 1024  # no object per node: the scan keeps a stack, not the nodes


def test_the_scan_counts_subgraph_and_function_nodes() -> None:
    model = _with_external("subgraph", Path("/x"))
    model.functions.append(
        helper.make_function(
            "com.example", "F", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])], []
        )
    )
    data = model.SerializeToString()
    assert count_nodes(data, 100) == 1 + 2 + 1 + 1  # relu, If, two branches, function body
    with pytest.raises(TooManyNodes):
        count_nodes(data, 4)


@pytest.mark.parametrize("cut", [1, 5, 17])
def test_a_truncated_model_does_not_scan(cut: int) -> None:
    data = relu_model().SerializeToString()
    with pytest.raises(InvalidModel):
        count_nodes(data[:-cut], 100)


def test_training_mode_defined_inside_a_subgraph() -> None:
    model = _with_external("subgraph", Path("/nonexistent"))
    branch = model.graph.node[-1].attribute[0].g
    branch.node[0].attribute[0].t.CopyFrom(numpy_helper.from_array(np.ones(1, np.float32), "w"))
    branch.node.append(helper.make_node("Constant", [], ["training_mode"], value_int=1))
    model.graph.node[-1].attribute[1].g.CopyFrom(branch)
    assert "inside a subgraph" in refused(model, InvalidTrainingMode)

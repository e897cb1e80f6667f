"""Name hygiene of composed models, on a model built with onnx.helper: an If whose branches read
the insertion point from the outer scope, a model-local function in a custom domain, and
value_info. Every added name is new and prefixed (inside the inserted If's branches too), no
subgraph reuses an outer name, the model's readers of the tensor (subgraphs included) read the
layer's output, and functions, domains and value_info are kept."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from service.compose import compose, read_record
from service.core import kernel
from service.core.config import DataFormat
from service.layers.resolve import dropout_config
from tests.onnx.torch_models import run, spec

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="default_random_engine is libstdc++'s only"
)

SD2D = spec(data_format=DataFormat.CHANNELS_LAST)
SHAPE = ["N", 3, 3, 6]
DOMAIN = "com.example"


def branchy_model() -> onnx.ModelProto:
    """X -> Relu -> T; Z = If(cond): then T * 2 (Mul reads T from outside), else Twice(T) + X.

    ``Twice`` is a function of the custom domain; T, Z and a branch value have value_info.
    """
    f32 = TensorProto.FLOAT
    then = helper.make_graph(
        [helper.make_node("Mul", ["T", "two"], ["then_out"], name="then_mul")],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", f32, SHAPE)],
        initializer=[numpy_helper.from_array(np.array(2, np.float32), "two")],
    )
    other = helper.make_graph(
        [
            helper.make_node("Twice", ["T"], ["doubled"], domain=DOMAIN, name="else_twice"),
            helper.make_node("Add", ["doubled", "X"], ["else_out"], name="else_add"),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", f32, SHAPE)],
        value_info=[helper.make_tensor_value_info("doubled", f32, SHAPE)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["X"], ["T"], name="relu"),
            helper.make_node("If", ["cond"], ["Z"], then_branch=then, else_branch=other),
        ],
        "branchy",
        [
            helper.make_tensor_value_info("X", f32, SHAPE),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("Z", f32, SHAPE)],
        value_info=[helper.make_tensor_value_info("T", f32, SHAPE)],
    )
    twice = helper.make_function(
        DOMAIN,
        "Twice",
        ["a"],
        ["b"],
        [helper.make_node("Add", ["a", "a"], ["b"])],
        [helper.make_opsetid("", 17)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=opsets, functions=[twice], ir_version=8)


def scopes(graph: onnx.GraphProto, outer: frozenset[str] = frozenset()) -> Iterator[str]:
    """Every name a graph defines that an enclosing graph defines too (none should)."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {name for node in graph.node for name in node.output if name}
    yield from sorted(defined & outer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from scopes(attribute.g, outer | defined)


def names(graph: onnx.GraphProto) -> Iterator[str]:
    """Every value, node and initializer name of a graph and its subgraphs."""
    yield graph.name
    for values in (graph.input, graph.output, graph.value_info, graph.initializer):
        yield from (v.name for v in values)
    for node in graph.node:
        yield from (node.name, *node.input, *node.output)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from names(attribute.g)


def x_value() -> NDArray[np.float32]:
    return np.random.default_rng(3).standard_normal((4, 3, 3, 6)).astype(np.float32)


def feeds(cond: bool, training: bool) -> dict[str, Any]:
    return {"X": x_value(), "cond": np.array(cond), "training_mode": np.array(training)}


@pytest.mark.parametrize("after", [["T"], ["X"], ["T", "X"]])
def test_added_names_are_new_and_prefixed_and_no_scope_reuses_an_outer_name(
    after: list[str],
) -> None:
    original = branchy_model()
    composed = onnx.load_from_string(
        compose(original.SerializeToString(), SD2D, after=after, seed=1, max_nodes=100)
    )
    onnx.checker.check_model(composed, full_check=True)
    before = set(names(original.graph))
    added = set(names(composed.graph)) - before - {"", "training_mode"}
    prefixes = [layer.prefix for layer in read_record(composed)]
    assert len(set(prefixes)) == len(after)
    assert added and all(any(name.startswith(p) for p in prefixes) for name in added)
    # inside the inserted If's branches too
    inner = {
        name
        for node in composed.graph.node
        if node.op_type == "If" and node.name.startswith(tuple(prefixes))
        for attribute in node.attribute
        for name in names(attribute.g)
    }
    assert inner and all(
        n.startswith(tuple(prefixes)) for n in inner - before - {"", "training_mode"}
    )
    assert list(scopes(composed.graph)) == []
    nodes = [n.name for n in composed.graph.node if n.name]
    assert len(nodes) == len(set(nodes))


def test_functions_domains_and_value_info_are_kept() -> None:
    original = branchy_model()
    composed = onnx.load_from_string(
        compose(original.SerializeToString(), SD2D, after=["T"], seed=1, max_nodes=100)
    )
    assert list(composed.functions) == list(original.functions)
    assert list(composed.opset_import) == list(original.opset_import)
    for value in original.graph.value_info:
        assert value in composed.graph.value_info
    branch = next(n for n in composed.graph.node if n.op_type == "If" and not n.name)
    assert [a.g.value_info for a in branch.attribute if a.name == "else_branch"] == [
        other.g.value_info
        for other in original.graph.node[1].attribute
        if other.name == "else_branch"
    ]


@pytest.mark.parametrize("after", ["T", "X"])
@pytest.mark.parametrize("cond", [True, False])
def test_readers_inside_subgraphs_read_the_layer_output(after: str, cond: bool) -> None:
    original = branchy_model().SerializeToString()
    composed = compose(original, SD2D, after=[after], seed=7, max_nodes=100)
    x = x_value()
    (plain,) = run(original, {"X": x, "cond": np.array(cond)})
    (inference,) = run(composed, feeds(cond, training=False))
    assert np.array_equal(plain.view(np.uint32), inference.view(np.uint32))

    config = dropout_config(SD2D)
    if after == "T":
        t = kernel.apply(config, np.maximum(x, 0), training=True, seed=7).output
        x_seen = x
    else:  # after the input: the Relu and the else branch's Add both read the dropped X
        x_seen = kernel.apply(config, x, training=True, seed=7).output
        t = np.maximum(x_seen, 0)
    want = t * np.float32(2) if cond else (t + t) + x_seen
    (trained,) = run(composed, feeds(cond, training=True))
    assert np.array_equal(trained.view(np.uint32), want.view(np.uint32))

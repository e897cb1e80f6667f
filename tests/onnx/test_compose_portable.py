"""Composed portable models on five runtimes: inference is the model itself, training is the
model cut at each insertion point with /apply's answer (seed + i at insertion i) between the
parts, each part run by the same runtime; for a hand-built graph and torch.onnx's exports.

tract loads a graph with one If per scope only: it names every If node "If" (tract
onnx/src/ops/logic.rs, ``to_typed`` wires ``self.name()``, the operator's name, where other
operators use the node's), so a model with two insertions fails to load there (checked below,
and said in the README); it runs one insertion per model here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from service.compose import compose, read_record
from service.compose.record import PORTABLE
from service.compose.validate import nodes
from service.core import kernel
from service.errors import InvalidTrainingMode, MixedMaskForms
from service.layers.resolve import dropout_config
from tests.onnx import runtimes
from tests.onnx.conftest import RUNTIMES, loader
from tests.onnx.test_compose import extract, graph_io, relu_points
from tests.onnx.torch_models import exported, image, spec

MAX_NODES = 10_000
LAYER = spec(rate=0.3)
SEED = 2**64 - 1  # insertion 1 takes seed 0: seed + i wraps mod 2**64


def hand_built() -> bytes:
    """X (N, 4, 3, 3) -> Mul -> Relu (h) -> Add (out): two channels_first insertion points."""
    weight = np.linspace(-1, 1, 4 * 9, dtype=np.float32).reshape(1, 4, 3, 3)
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["image", "w"], ["scaled"]),
            helper.make_node("Relu", ["scaled"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["out"]),
        ],
        "hand",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 4, 3, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4, 3, 3])],
        initializer=[
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(np.float32(0.25), "b"),
        ],
    )
    opsets = [helper.make_opsetid("", 17)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


#: (name, the model, its input, the insertion points)
def cases() -> list[tuple[str, bytes, NDArray[np.float32], list[str]]]:
    found = [("hand-built", hand_built(), _images((3, 4, 3, 3)), ["h", "out"])]
    for exporter, opset in [("torchscript", 17), ("dynamo", None)]:
        model = exported("cnn", exporter, opset)
        found.append((f"cnn-{exporter}", model, image("cnn"), relu_points(model, 2)))
    return found


def _images(shape: tuple[int, ...]) -> NDArray[np.float32]:
    return np.random.default_rng(2).standard_normal(shape).astype(np.float32)


def bits(outputs: list[NDArray[Any]]) -> list[bytes]:
    return [np.ascontiguousarray(a).tobytes() for a in outputs]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_inference_is_the_model_and_training_the_parts_with_apply_between(
    request: pytest.FixtureRequest, runtime: str, tmp_path: Path
) -> None:
    load = loader(request, runtime)
    config = dropout_config(LAYER)
    for name, original, x, every_point in cases():
        points = every_point[-1:] if runtime == "tract" else every_point
        composed = compose(
            original, LAYER, after=points, seed=SEED, max_nodes=MAX_NODES, mask="portable"
        )
        run = load(composed)
        inputs, outputs = graph_io(original)
        own = load(original)({inputs[0]: x})
        assert bits(run({inputs[0]: x, "training_mode": np.array(False)})) == bits(own), name

        (value,) = load(extract(original, inputs, points[:1], tmp_path))({inputs[0]: x})
        for i, (point, following) in enumerate(zip(points, [*points[1:], None], strict=True)):
            dropped = kernel.apply(config, value, training=True, seed=(SEED + i) % 2**64).output
            assert (dropped == 0).any() and (dropped != 0).any()
            if following is None and point in outputs:  # the layer is the model's last step
                results = [dropped if o == point else r for o, r in zip(outputs, own, strict=True)]
                break
            targets = outputs if following is None else [following]
            results = load(extract(original, [point], targets, tmp_path))({point: dropped})
            value = results[0]
        trained = run({inputs[0]: x, "training_mode": np.array(True)})
        assert bits(trained) == bits(results), name


def test_the_record_and_the_graph_say_portable() -> None:
    original = exported("cnn", "torchscript", 17)
    points = relu_points(original, 2)
    composed = compose(original, LAYER, after=points, seed=3, max_nodes=MAX_NODES, mask="portable")
    model = onnx.load_from_string(composed)
    assert [v.name for v in model.graph.input] == ["image", "training_mode"]
    assert "training_mode" not in {t.name for t in model.graph.initializer}
    assert not {n.op_type for n in nodes(model)} & {
        "Dropout",
        "RandomUniform",
        "RandomNormal",
        "RandomUniformLike",
        "RandomNormalLike",
        "Bernoulli",
        "Multinomial",
    }
    record = read_record(model)
    assert [(r.mask, r.dropout, r.platform) for r in record] == [("portable", None, PORTABLE)] * 2
    assert all(r.mask_node and r.mask_node.startswith(r.prefix) for r in record)
    dropout = read_record(
        onnx.load_from_string(compose(original, LAYER, after=points, seed=3, max_nodes=MAX_NODES))
    )
    assert [r.mask for r in dropout] == ["dropout"] * 2
    assert all(r.mask_node == r.dropout for r in dropout)


def test_a_model_keeps_one_form() -> None:
    original = exported("cnn", "torchscript", 17)
    (inside,) = relu_points(original, 1)
    once = compose(original, LAYER, after=[inside], seed=5, max_nodes=MAX_NODES)
    with pytest.raises(MixedMaskForms, match="'dropout' mask form"):
        compose(once, LAYER, after=["features"], seed=9, max_nodes=MAX_NODES, mask="portable")
    portable = compose(
        original, LAYER, after=[inside], seed=5, max_nodes=MAX_NODES, mask="portable"
    )
    with pytest.raises(MixedMaskForms, match="'portable' mask form"):
        compose(portable, LAYER, after=["features"], seed=9, max_nodes=MAX_NODES)
    twice = compose(
        portable, LAYER, after=["features"], seed=9, max_nodes=MAX_NODES, mask="portable"
    )
    model = onnx.load_from_string(twice)
    assert [v.name for v in model.graph.input] == ["image", "training_mode"]
    assert [r.seed for r in read_record(model)] == [5, 9]


def test_a_training_mode_with_a_default_is_refused_in_the_portable_form() -> None:
    original = onnx.load_from_string(hand_built())
    original.graph.input.append(
        helper.make_tensor_value_info("training_mode", TensorProto.BOOL, [])
    )
    original.graph.initializer.append(numpy_helper.from_array(np.array(False), "training_mode"))
    with pytest.raises(InvalidTrainingMode, match="plain input"):
        compose(
            original.SerializeToString(),
            LAYER,
            after=["h"],
            seed=1,
            max_nodes=MAX_NODES,
            mask="portable",
        )


def test_tract_cannot_load_two_ifs_in_one_scope() -> None:
    """Why tract runs one insertion per model above: its If is always named "If"."""
    composed = compose(
        hand_built(), LAYER, after=["h", "out"], seed=1, max_nodes=MAX_NODES, mask="portable"
    )
    with pytest.raises(Exception, match="Duplicate node name: If"):
        runtimes.tract(composed)({"image": _images((3, 4, 3, 3)), "training_mode": np.array(True)})

"""The compose contract on models torch.onnx exports (the TorchScript exporter at opset 17 and
the dynamo exporter at its default; a small CNN and torchvision's resnet18): inference mode is
the model itself, bit for bit; training mode is the model cut at each tensor with the kernel
(what /apply runs) applied there, seed + i at insertion i, on the first run of a fresh
onnxruntime session with every optimization on (Linux: libstdc++'s random engine)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray

from service.cli import main
from service.compose import RECORD_KEY, compose, read_record
from service.core import kernel
from service.core.config import Kind
from service.layers.resolve import dropout_config
from tests.onnx.torch_models import EXPORTERS, NAMES, exported, image, run, spec

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="default_random_engine is libstdc++'s only"
)

CASES = [(name, exporter, opset) for name in NAMES for exporter, opset in EXPORTERS]
IDS = [f"{name}-{exporter}" for name, exporter, _ in CASES]
MAX_NODES = 10_000
TRAIN = {"training_mode": np.array(True)}


SD2D = spec()


def bits(a: NDArray[Any]) -> NDArray[Any]:
    return np.ascontiguousarray(a).view(np.uint32)


def relu_points(model: bytes, count: int) -> list[str]:
    """``count`` Relu outputs of rank 4, spread over the model (insertion points inside it)."""
    proto = onnx.shape_inference.infer_shapes(onnx.load_from_string(model))
    ranks = {value.name: len(value.type.tensor_type.shape.dim) for value in proto.graph.value_info}
    relus = [n.output[0] for n in proto.graph.node if n.op_type == "Relu"]
    relus = [name for name in relus if ranks.get(name) == 4]
    assert len(relus) >= count
    step = len(relus) // count
    return [relus[i * step] for i in range(count)]


def extract(model: bytes, inputs: list[str], outputs: list[str], tmp: Path) -> bytes:
    """The part of ``model`` from ``inputs`` to ``outputs`` (onnx.utils.extract_model)."""
    source, part = tmp / "whole.onnx", tmp / "part.onnx"
    source.write_bytes(model)
    onnx.utils.extract_model(str(source), str(part), inputs, outputs)
    return part.read_bytes()


def graph_io(model: bytes) -> tuple[list[str], list[str]]:
    graph = onnx.load_from_string(model).graph
    return [v.name for v in graph.input], [v.name for v in graph.output]


@pytest.fixture(params=CASES, ids=IDS)
def case(request: pytest.FixtureRequest) -> tuple[str, bytes]:
    name, exporter, opset = request.param
    return name, exported(name, exporter, opset)


def test_structure_is_kept_and_inference_is_the_model_itself(case: tuple[str, bytes]) -> None:
    name, original = case
    points = relu_points(original, 2)
    composed = compose(original, SD2D, after=points, seed=3, max_nodes=MAX_NODES)
    before, after = onnx.load_from_string(original), onnx.load_from_string(composed)
    inputs, outputs = graph_io(original)
    assert graph_io(composed) == ([*inputs, "training_mode"], outputs)
    assert after.ir_version == before.ir_version
    assert list(after.opset_import) == list(before.opset_import)
    onnx.checker.check_model(composed, full_check=True)
    onnx.shape_inference.infer_shapes(after, check_type=True, strict_mode=True)
    x = {"image": image(name)}
    expected = run(original, x)
    for got, want in zip(run(composed, x), expected, strict=True):
        assert np.array_equal(bits(got), bits(want))
    trained = run(composed, {**x, **TRAIN})
    assert not np.array_equal(trained[0], expected[0])  # onnxruntime kept the dropout


def test_training_inside_the_model_is_the_parts_with_apply_between(
    case: tuple[str, bytes], tmp_path: Path
) -> None:
    name, original = case
    points = relu_points(original, 2)
    seed = 2**64 - 1  # insertion 1 takes seed 0: seed + i wraps mod 2**64
    composed = compose(original, SD2D, after=points, seed=seed, max_nodes=MAX_NODES)
    inputs, outputs = graph_io(original)
    config = dropout_config(SD2D)
    (value,) = run(extract(original, inputs, points[:1], tmp_path), {"image": image(name)})
    cuts = [*points[1:], None]
    for i, (point, following) in enumerate(zip(points, cuts, strict=True)):
        dropped = kernel.apply(config, value, training=True, seed=(seed + i) % 2**64).output
        assert (dropped == 0).any() and (dropped != 0).any()
        targets = outputs if following is None else [following]
        results = run(extract(original, [point], targets, tmp_path), {point: dropped})
        value = results[0]
    got = run(composed, {"image": image(name), **TRAIN})
    for mine, theirs in zip(got, results, strict=True):
        assert np.array_equal(bits(mine), bits(theirs))


def test_training_after_a_graph_output_is_apply_of_it(case: tuple[str, bytes]) -> None:
    name, original = case
    x = {"image": image(name)}
    if name == "cnn":  # spatial dropout on the feature maps, after its first output
        layer, after, index = SD2D, ["features"], 0
    else:  # element-wise dropout on the logits, the only output: no after needed
        layer, after, index = spec(Kind.DROPOUT, 0.3, "drop"), [], 0
    composed = compose(original, layer, after=after, seed=41, max_nodes=MAX_NODES)
    plain = run(original, x)[index]
    got = run(composed, {**x, **TRAIN})[index]
    want = kernel.apply(dropout_config(layer), plain, training=True, seed=41).output
    assert np.array_equal(bits(got), bits(want))


def test_compose_twice_reuses_training_mode_and_appends_to_the_record(tmp_path: Path) -> None:
    original = exported("cnn", "torchscript", 17)
    (inside,) = relu_points(original, 1)
    once = compose(original, SD2D, after=[inside], seed=5, max_nodes=MAX_NODES)
    other = spec(Kind.SPATIAL_2D, 0.25, "second")
    twice = compose(once, other, after=["features"], seed=9, max_nodes=MAX_NODES)
    model = onnx.load_from_string(twice)
    assert [v.name for v in model.graph.input] == ["image", "training_mode"]
    assert [t.name for t in model.graph.initializer].count("training_mode") == 1
    record = read_record(model)
    assert [(r.index, r.tensor, r.insertion, r.seed) for r in record] == [
        (0, inside, 0, 5),
        (1, "features", 0, 9),
    ]
    assert [r.layer["rate"] for r in record] == [0.5, 0.25]
    assert record[0].prefix != record[1].prefix
    entries = [p for p in model.metadata_props if p.key == RECORD_KEY]
    assert len(entries) == 1 and json.loads(entries[0].value)["version"] == 1

    x = image("cnn")
    first = run(extract(original, ["image"], [inside], tmp_path), {"image": x})[0]
    dropped = kernel.apply(dropout_config(SD2D), first, training=True, seed=5).output
    features, _ = run(
        extract(original, [inside], ["features", "logits"], tmp_path), {inside: dropped}
    )
    want = kernel.apply(dropout_config(other), features, training=True, seed=9).output
    got = run(twice, {"image": x, **TRAIN})[0]
    assert np.array_equal(bits(got), bits(want))


def test_the_cli_composes_a_file_with_a_spec_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "cnn.onnx"
    source.write_bytes(exported("cnn", "torchscript", 17))
    layer = tmp_path / "sd.json"
    layer.write_text('{"rate": 0.5, "data_format": "channels_first", "seed": 11}')
    out = tmp_path / "out.onnx"
    assert main(["compose", str(source), str(layer), "-o", str(out), "--after", "features"]) == 0
    assert capsys.readouterr().out == f"wrote {out} (after features; seed 11; mask dropout)\n"
    from_file = replace(SD2D, name=None, seed=11)  # the spec file, resolved
    assert out.read_bytes() == compose(
        source.read_bytes(), from_file, after=["features"], seed=11, max_nodes=MAX_NODES
    )
    assert main(["compose", str(source), str(layer), "-o", str(out), "--after", "nope"]) == 1
    assert "(unknown_tensor)" in capsys.readouterr().err
    assert main(["compose", str(source), str(layer), "-o", str(out)]) == 1
    assert "(ambiguous_insertion_point)" in capsys.readouterr().err

"""The exported model: valid at every opset and dtype offered, and, run by onnxruntime with
every optimization on, the kernel's answer bit for bit (on Linux, libstdc++'s random engine)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from service import __version__
from service.cli import main
from service.core import kernel, rng
from service.core.config import DataFormat, DropoutConfig, Kind
from service.errors import RequestValidation, SeedRequired, UnsupportedOnnxDtype, UnsupportedOpset
from service.layers.resolve import ResolvedSpec
from service.layers.spec import Layer
from service.onnx.export import export_layer
from service.onnx.graph import ONNX_DTYPES, GraphSpec, build_model
from service.onnx.opsets import DEFAULT_OPSET, MIN_OPSET, supported_opsets
from service.store import open_store
from tests.structures import CF, CL
from tests.structures import STRUCTURES as SHARED_STRUCTURES

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="default_random_engine is libstdc++'s only"
)

DTYPES = list(ONNX_DTYPES)
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}

#: The shared structures, and one more noise_shape form.
STRUCTURES: list[tuple[DropoutConfig, tuple[int, ...]]] = [
    *SHARED_STRUCTURES,
    (DropoutConfig(Kind.DROPOUT, 0.5, noise_shape=(None, 6, 1)), (4, 6, 5)),
]
RATES = [0.1, 0.5, 0.77, 0.999]
SEEDS = [0, 1, 7, 2**64 - 1, 123456789]


def bits(a: NDArray[Any]) -> NDArray[Any]:
    return np.asarray(a).view(UINT[np.asarray(a).dtype.itemsize])


def session(model: onnx.ModelProto) -> Any:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 1  # a thread pool per session would dominate these tests
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def model_for(
    config: DropoutConfig, rank: int, dtype: str, seed: int, opset: int = DEFAULT_OPSET
) -> onnx.ModelProto:
    return build_model(GraphSpec(config, rank, dtype, opset, rng.mix_seed(seed)))


def sample(shape: tuple[int, ...], dtype: str, seed: int = 0) -> NDArray[Any]:
    """Normal values with a NaN, an inf, a -inf and a -0.0 among them (where they fit)."""
    x = np.asarray(np.random.default_rng(seed).standard_normal(shape) * 50, dtype=dtype)
    flat = x.reshape(-1)
    for at, value in enumerate([np.nan, np.inf, -np.inf, -0.0][: flat.size]):
        flat[(at * 7) % flat.size] = value
    return x


def assert_same(got: NDArray[Any], expected: NDArray[Any]) -> None:
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert np.array_equal(bits(got), bits(expected))


def run_training(sess: Any, x: NDArray[Any]) -> tuple[NDArray[Any], NDArray[np.bool_]]:
    y, mask = sess.run(None, {"X": x, "training_mode": np.array(True)})
    return y, mask


# -- validity --------------------------------------------------------------------------


def test_the_offered_opsets_run_from_13_to_the_newest_both_packages_load() -> None:
    offered = supported_opsets()
    assert offered.start == MIN_OPSET == 13 and DEFAULT_OPSET in offered
    newest = offered.stop - 1
    assert newest <= onnx.defs.onnx_opset_version()
    if newest < onnx.defs.onnx_opset_version():  # then onnxruntime refuses the next one
        config = DropoutConfig(Kind.SPATIAL_2D, 0.5)
        with pytest.raises(Exception, match="opset"):
            session(build_model(GraphSpec(config, 4, "float32", newest + 1, 1)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opset", list(supported_opsets()))
def test_the_checker_passes_every_opset_and_dtype_offered(opset: int, dtype: str) -> None:
    for config, shape in [*STRUCTURES, *_EDGE_RATES]:
        model = model_for(config, len(shape), dtype, 7, opset)
        onnx.checker.check_model(model, full_check=True)
        assert [o.version for o in model.opset_import] == [opset]


_EDGE_RATES = [
    (DropoutConfig(Kind.SPATIAL_2D, 0.0, CL), (2, 3, 3, 4)),
    (DropoutConfig(Kind.SPATIAL_2D, 1.0, CF), (2, 3, 3, 4)),
]


# -- the graph's structure -------------------------------------------------------------


def _nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Every node, subgraphs included."""
    found: list[onnx.NodeProto] = []
    for node in graph.node:
        found.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found += _nodes(attr.g)
    return found


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize(
    ("config", "x_dims", "mask_dims"),
    [
        (DropoutConfig(Kind.SPATIAL_2D, 0.5, CF), ["N", "C", "H", "W"], ["N", "C", 1, 1]),
        (DropoutConfig(Kind.SPATIAL_2D, 0.5, CL), ["N", "H", "W", "C"], ["N", 1, 1, "C"]),
        (DropoutConfig(Kind.SPATIAL_1D, 0.5, CL), ["N", "L", "C"], ["N", 1, "C"]),
        (DropoutConfig(Kind.SPATIAL_3D, 0.5, CF), ["N", "C", "D", "H", "W"], ["N", "C", 1, 1, 1]),
        (
            DropoutConfig(Kind.DROPOUT, 0.5, noise_shape=(None, 1, 6)),
            ["N", "d1", 6],
            ["N", 1, 6],
        ),
    ],
)
def test_batch_and_spatial_dimensions_stay_symbolic(
    config: DropoutConfig, x_dims: list[str | int], mask_dims: list[str | int]
) -> None:
    model = model_for(config, len(x_dims), "float32", 1)
    inputs = {v.name: v for v in model.graph.input}
    outputs = {v.name: v for v in model.graph.output}
    assert _dims(inputs["X"]) == x_dims == _dims(outputs["Y"])
    assert _dims(outputs["mask"]) == mask_dims


def test_dropout_draws_a_mask_of_shape_x_with_the_mixed_seed_and_uses_it() -> None:
    model = model_for(DropoutConfig(Kind.SPATIAL_2D, 0.3, CL), 4, "float32", 42)
    nodes = _nodes(model.graph)
    (dropout,) = [n for n in nodes if n.op_type == "Dropout"]
    assert onnx.helper.get_attribute_value(dropout.attribute[0]) == rng.mix_seed(42)
    assert dropout.attribute[0].name == "seed"
    mask = dropout.output[1]
    assert any(mask in n.input for n in nodes), "the mask must be consumed in the graph"
    assert nodes[0].op_type == "Shape" and nodes[0].input == ["X"]
    # training_mode: a bool input that defaults to false through an initializer.
    assert "training_mode" in [v.name for v in model.graph.input]
    (default,) = [t for t in model.graph.initializer if t.name == "training_mode"]
    assert onnx.numpy_helper.to_array(default).item() is False
    assert "training_mode" in [i.name for i in session(model).get_overridable_initializers()]


@pytest.mark.parametrize("rate", [0.0, 1.0, 1 - 1e-9])
def test_rates_zero_and_one_need_no_dropout_node(rate: float) -> None:
    # onnxruntime refuses ratio >= 1, and 1 - 1e-9 is 1.0 in float32, the kernel's threshold.
    model = model_for(DropoutConfig(Kind.SPATIAL_2D, rate, CL), 4, "float32", 3)
    assert "Dropout" not in [n.op_type for n in _nodes(model.graph)]


def test_onnxruntime_keeps_the_dropout_after_optimizing(tmp_path: Path) -> None:
    # EliminateDropout removes a Dropout whose mask is unused: ours must survive ENABLE_ALL.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    model = model_for(DropoutConfig(Kind.SPATIAL_2D, 0.5, CL), 4, "float32", 3)
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(tmp_path / "optimized.onnx")
    assert "Dropout" in [n.op_type for n in _nodes(optimized.graph)]


# -- what onnxruntime computes ---------------------------------------------------------


@linux_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("config", "shape"), STRUCTURES)
def test_first_training_run_is_the_kernel_and_inference_is_the_input(
    config: DropoutConfig, shape: tuple[int, ...], dtype: str
) -> None:
    x = sample(shape, dtype)
    for rate in RATES:
        layer = replace(config, rate=rate)
        for seed in SEEDS:
            sess = session(model_for(layer, len(shape), dtype, seed))
            y, mask = sess.run(None, {"X": x})
            assert_same(y, x)
            assert mask.all() and mask.shape == kernel.mask_shape(layer, shape)
            # Inference runs no Dropout, so the first training run still draws the seed's stream.
            y, mask = run_training(sess, x)
            expected = kernel.apply(layer, x, training=True, seed=seed)
            assert_same(y, np.asarray(expected.output))
            assert np.array_equal(mask, expected.mask) and mask.shape == expected.mask.shape


@linux_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opset", list(supported_opsets()))
def test_every_opset_gives_the_kernel(opset: int, dtype: str) -> None:
    for config, shape in [STRUCTURES[2], STRUCTURES[3], STRUCTURES[9], *_EDGE_RATES]:
        x = sample(shape, dtype, seed=opset)
        y, _ = run_training(session(model_for(config, len(shape), dtype, opset, opset)), x)
        expected = kernel.apply(config, x, training=True, seed=opset).output
        assert_same(y, np.asarray(expected))


@linux_only
@pytest.mark.parametrize(("config", "shape"), STRUCTURES[:6])
def test_run_j_draws_the_stream_of_stream_seed_plus_j_minus_1(
    config: DropoutConfig, shape: tuple[int, ...]
) -> None:
    # The documented sequence: the second run is the stream seed + 1 (not mix_seed(seed + 1)).
    x = sample(shape, "float32")
    stream = rng.mix_seed(5)
    sess = session(model_for(config, len(shape), "float32", 5))
    mask_shape = kernel.mask_shape(config, shape)
    for run in range(3):
        _, mask = run_training(sess, x)
        expected = rng.keep_mask(stream + run, 1, mask.size, config.rate).reshape(mask_shape)
        assert np.array_equal(mask, expected), run
    assert not np.array_equal(mask, kernel.keep_mask_for(config, shape, 6))


@linux_only
@pytest.mark.parametrize("rate", [0.0, 1.0, 1 - 1e-9])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rate_zero_is_identity_and_rate_one_is_zeros_in_training(rate: float, dtype: str) -> None:
    x = sample((2, 3, 3, 4), dtype)
    y, mask = run_training(
        session(model_for(DropoutConfig(Kind.SPATIAL_2D, rate, CL), 4, dtype, 9)), x
    )
    if rate == 0:
        assert_same(y, x)
        assert mask.all()
    else:
        assert_same(y, np.zeros_like(x))  # +0.0 everywhere, NaN and inf included
        assert not mask.any()


@linux_only
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.77, 0.999, 0.9999, 1 - 2**-24, 1e-30, 0.3333])
def test_float16_is_exact_for_every_value(rate: float) -> None:
    # All 65536 float16 bit patterns (NaN payloads, -0.0, subnormals, overflow to inf).
    x = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(2, -1)
    config = DropoutConfig(Kind.DROPOUT, rate)
    y, mask = run_training(session(model_for(config, 2, "float16", 11)), x)
    expected = kernel.apply(config, x, training=True, seed=11)
    assert_same(y, np.asarray(expected.output))
    assert np.array_equal(mask, expected.mask)


@linux_only
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_special_values_are_exact(dtype: str) -> None:
    info = np.finfo(dtype)
    specials = [-0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf, info.max, -info.max]
    specials += [info.smallest_subnormal, -info.smallest_subnormal, info.tiny, 1.0, -1.0]
    x = np.array(specials * 40, dtype=dtype).reshape(8, -1)
    quiet_payload = np.array([0x7FC12345, 0xFFC00001], dtype=np.uint32)  # NaNs with payloads
    if dtype == "float64":
        quiet_payload = np.array([0x7FF8000000000123, 0xFFF8000000000001], dtype=np.uint64)
    x.reshape(-1)[:2] = quiet_payload.view(dtype)
    for rate in [0.5, 1e-30]:
        config = DropoutConfig(Kind.DROPOUT, rate)
        y, _ = run_training(session(model_for(config, 2, dtype, 4)), x)
        assert_same(y, np.asarray(kernel.apply(config, x, training=True, seed=4).output))


@linux_only
def test_a_kept_negative_zero_stays_negative() -> None:
    # onnxruntime's Where turns a -0.0 selected from its X input into +0.0 (it merges the two
    # selections with `x != 0 ? x : y`); the graph takes kept values from Where's Y input.
    x = np.full((1, 1, 1, 8), -0.0, dtype=np.float32)
    config = DropoutConfig(Kind.SPATIAL_2D, 1e-30, CL)  # every channel kept
    y, _ = run_training(session(model_for(config, 4, "float32", 1)), x)
    assert np.signbit(y).all()


@linux_only
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from([Kind.SPATIAL_1D, Kind.SPATIAL_2D, Kind.SPATIAL_3D, Kind.DROPOUT]),
    data_format=st.sampled_from([CL, CF]),
    dtype=st.sampled_from(DTYPES),
    rate=st.floats(0, 1),
    seed=st.integers(0, 2**64 - 1),
    dims=st.lists(st.integers(0, 5), min_size=5, max_size=5),
    data=st.data(),
)
def test_any_layer_and_input_matches_the_kernel(
    kind: Kind,
    data_format: DataFormat,
    dtype: str,
    rate: float,
    seed: int,
    dims: list[int],
    data: st.DataObject,
) -> None:
    rank = kind.rank if kind.rank is not None else data.draw(st.integers(0, 4))
    shape = tuple(dims[:rank])
    config = DropoutConfig(kind, rate, data_format)
    x = sample(shape, dtype, seed=seed % 1000)
    y, mask = run_training(session(model_for(config, rank, dtype, seed)), x)
    expected = kernel.apply(config, x, training=True, seed=seed)
    assert_same(y, np.asarray(expected.output))
    assert np.array_equal(mask, np.broadcast_to(expected.mask, mask.shape))
    assert mask.shape == expected.mask.shape


# -- export_layer: seeds, metadata, refusals ---------------------------------------------


def _spec(**fields: Any) -> ResolvedSpec:
    base: dict[str, Any] = {
        "kind": Kind.SPATIAL_2D,
        "rate": 0.5,
        "data_format": CL,
        "batch_size": None,
        "name": "sd",
        "trainable": True,
        "seed": 7,
        "dtype": None,
        "noise_shape": None,
    }
    return ResolvedSpec(**{**base, **fields})


def test_metadata_holds_the_user_seed_the_layer_and_the_producer() -> None:
    layer = Layer(
        id="0" * 31 + "1",
        **_spec().as_dict(),
        weights=[],
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    model = export_layer(layer, seed=99)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["seed"] == "99" and props["stream_seed"] == str(rng.mix_seed(99))
    assert json.loads(props["layer"]) == layer.model_dump(mode="json")
    assert props["producer_version"] == __version__ == model.producer_version
    assert model.producer_name == "spatial-dropout"
    assert session(model).get_modelmeta().custom_metadata_map["seed"] == "99"
    # The layer's own seed is the default.
    assert {p.key: p.value for p in export_layer(layer).metadata_props}["seed"] == "7"


def test_a_layer_without_a_seed_needs_one() -> None:
    with pytest.raises(SeedRequired) as err:
        export_layer(_spec(seed=None))
    assert err.value.detail == (
        "Layer 'sd' has no seed, and an exported model bakes its seed in: "
        "pass one (?seed= or --seed)."
    )
    assert export_layer(_spec(seed=None), seed=0).metadata_props[0].value == "0"


@pytest.mark.parametrize("opset", [MIN_OPSET - 1, supported_opsets().stop, 0])
def test_opsets_outside_the_range_are_refused(opset: int) -> None:
    with pytest.raises(UnsupportedOpset) as err:
        export_layer(_spec(), opset=opset)
    newest = supported_opsets().stop - 1
    assert err.value.detail == (
        f"opset {opset} is not offered: choose one from 13 to {newest} (the newest that both "
        "the installed onnx and onnxruntime support)."
    )


def test_bfloat16_is_refused_with_the_reason() -> None:
    with pytest.raises(UnsupportedOnnxDtype) as err:
        export_layer(_spec(), dtype="bfloat16")
    assert err.value.detail == (
        "No ONNX model for bfloat16: onnxruntime has no CPU kernel for Where or Div in "
        "bfloat16. Models are exported for float16, float32 and float64; the numpy engine "
        "runs every dtype."
    )


def test_element_wise_dropout_needs_a_rank_and_spatial_kinds_have_theirs() -> None:
    with pytest.raises(RequestValidation, match="pass the input rank"):
        export_layer(_spec(kind=Kind.DROPOUT, data_format=None))
    model = export_layer(_spec(kind=Kind.DROPOUT, data_format=None), rank=2)
    assert _dims(model.graph.input[0]) == ["N", "d1"]
    with pytest.raises(RequestValidation) as err:
        export_layer(_spec(), rank=3)
    assert err.value.detail == "rank: a spatial_dropout_2d layer takes rank 4 only."
    assert len(export_layer(_spec(), rank=4).graph.input[0].type.tensor_type.shape.dim) == 4


# -- the command line ------------------------------------------------------------------


def test_export_command_reads_a_spec_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPATIAL_DROPOUT_DATABASE_URL", f"sqlite:///{tmp_path / 'none.sqlite3'}")
    spec = tmp_path / "sd1.json"
    spec.write_text('{"kind": "spatial_dropout_1d", "rate": 0.25, "seed": 3}', encoding="utf-8")
    out = tmp_path / "sd1.onnx"
    assert main(["export", str(spec), "-o", str(out), "--opset", "17", "--dtype", "float64"]) == 0
    assert capsys.readouterr().out == f"wrote {out} (opset 17, float64, seed 3, mask dropout)\n"
    model = onnx.load(out)
    assert model.opset_import[0].version == 17
    x = sample((2, 5, 4), "float64")
    y, _ = run_training(session(model), x)
    config = DropoutConfig(Kind.SPATIAL_1D, 0.25, CL)
    assert_same(y, np.asarray(kernel.apply(config, x, training=True, seed=3).output))
    assert not (tmp_path / "none.sqlite3").exists()  # a spec file never opens the store


def test_export_command_reads_the_store_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database = tmp_path / "layers.sqlite3"
    store = open_store(f"sqlite:///{database}")
    layer = store.create(_spec(name="stored", seed=None, data_format=CF))
    store.close()
    monkeypatch.setenv("SPATIAL_DROPOUT_DATABASE_URL", f"sqlite:///{database}")
    out = tmp_path / "stored.onnx"
    assert main(["export", "stored", "-o", str(out)]) == 1
    assert capsys.readouterr().err == (
        "spatial-dropout export: Layer 'stored' has no seed, and an exported model bakes its "
        "seed in: pass one (?seed= or --seed). (seed_required)\n"
    )
    assert main(["export", layer.id, "-o", str(out), "--seed", "12"]) == 0
    assert export_layer(layer, seed=12).SerializeToString() == out.read_bytes()
    assert main(["export", "missing", "-o", str(out)]) == 1
    assert "(layer_not_found)" in capsys.readouterr().err


def test_export_command_refuses_what_the_route_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPATIAL_DROPOUT_DATABASE_URL", f"sqlite:///{tmp_path / 'none.sqlite3'}")
    spec = tmp_path / "sd.json"
    spec.write_text('{"rate": 0.5, "seed": 1}', encoding="utf-8")
    out = str(tmp_path / "x.onnx")
    with pytest.raises(SystemExit):  # not offered: no bfloat16 model runs in onnxruntime
        main(["export", str(spec), "-o", out, "--dtype", "bfloat16"])
    assert "invalid choice: 'bfloat16'" in capsys.readouterr().err
    assert main(["export", str(spec), "-o", out, "--opset", "12"]) == 1
    assert "(unsupported_opset)" in capsys.readouterr().err
    assert main(["export", "nobody", "-o", out]) == 1
    assert f"no layer store at {tmp_path / 'none.sqlite3'}" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite3").exists()  # a missing store is not created
    spec.write_text('{"rate": 1.5}', encoding="utf-8")
    assert main(["export", str(spec), "-o", out]) == 1
    assert "(invalid_rate)" in capsys.readouterr().err
    spec.write_text("{", encoding="utf-8")
    assert main(["export", str(spec), "-o", out]) == 1
    assert "(invalid_json)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(spec), "-o", out, "--seed", "-1"])

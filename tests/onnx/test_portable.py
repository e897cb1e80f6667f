"""The portable export: /apply's mask and values, bit for bit, on five ONNX runtimes.

onnxruntime, onnx.reference, OpenVINO (float32 precision hint), tract and onnxruntime-web
each run the exported graph in both modes; the kernel (``service.core.kernel``) is the answer.
OpenVINO has no float64: it computes float64 graphs in float32 (checked below, and said in
the README), so it runs float16 and float32 here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import onnx
import pytest
from numpy.typing import NDArray

from service.compose.validate import nodes
from service.core import kernel, rng
from service.core.config import DropoutConfig, Kind
from service.onnx.export import export_layer
from service.onnx.graph import GraphSpec, build_model
from tests.onnx import runtimes
from tests.onnx.conftest import RUNTIMES, loader
from tests.onnx.torch_models import spec
from tests.structures import CF, CL, STRUCTURES

#: Rates: the identity, all dropped, a power-of-two keep (a plain Div everywhere), rates
#: whose keep needs the exact division, and rates whose float32 rounds (to 1: all dropped).
RATES = [0.0, 1.0, 0.5, 0.3, 0.77, 1e-9, 0.9999999, 1 - 2**-26]
SEEDS = [0, 7, 2**63 - 1, 2**63, 2**64 - 1]
DTYPES = ["float16", "float32", "float64"]
RANDOM_OPS = {
    "Dropout",
    "RandomUniform",
    "RandomNormal",
    "RandomUniformLike",
    "RandomNormalLike",
    "Multinomial",
    "Bernoulli",
}


def portable(config: DropoutConfig, rank: int, dtype: str, seed: int) -> bytes:
    spec = GraphSpec(config, rank, dtype, 21, rng.mix_seed(seed), "portable")
    return build_model(spec).SerializeToString()


def sample(shape: tuple[int, ...], dtype: str, seed: int = 0) -> NDArray[Any]:
    """Values of every magnitude the dtype has, with NaN, +-inf, +-0.0, a subnormal and the
    largest finite value (whose quotient overflows) among them."""
    generator = np.random.default_rng(seed)
    info = np.finfo(dtype)
    exponents = generator.integers(info.minexp - info.nmant, info.maxexp - 1, shape)
    x = np.asarray(generator.uniform(-2, 2, shape) * np.exp2(exponents.astype(float)), dtype=dtype)
    flat = x.reshape(-1)
    specials = [np.nan, np.inf, -np.inf, -0.0, 0.0, info.smallest_subnormal * 3, -info.max]
    flat[: min(len(specials), flat.size)] = specials[: flat.size]
    return x


def bits(a: NDArray[Any]) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def check_both_modes(
    load: runtimes.Loader, model: bytes, config: DropoutConfig, x: NDArray[Any], seed: int
) -> None:
    run = load(model)
    expected = kernel.apply(config, x, training=True, seed=seed)
    y, mask = run({"X": x, "training_mode": np.array(True)})
    assert y.dtype == x.dtype and y.shape == x.shape
    assert bits(y) == bits(expected.output)
    assert np.array_equal(mask, np.broadcast_to(expected.mask, expected.mask.shape))
    y, mask = run({"X": x, "training_mode": np.array(False)})
    assert bits(y) == bits(x)  # inference: the input, every bit (NaN payloads included)
    assert mask.all() and mask.shape == expected.mask.shape


def _cases(runtime: str, shape: tuple[int, ...]) -> list[str]:
    """The dtypes a runtime is held to: OpenVINO has no float64, and onnxruntime-web reads a
    rank-0 input as shape [1] (both checked below)."""
    if runtime == "onnxruntime-web" and not shape:
        return []
    return [d for d in DTYPES if not (runtime == "openvino" and d == "float64")]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(("config", "shape"), STRUCTURES, ids=lambda v: str(v))
def test_every_kind_dtype_rate_and_seed_is_apply_bit_for_bit(
    request: pytest.FixtureRequest, runtime: str, config: DropoutConfig, shape: tuple[int, ...]
) -> None:
    load = loader(request, runtime)
    for dtype in _cases(runtime, shape):
        for i, rate in enumerate(RATES):
            seed = SEEDS[i % len(SEEDS)]
            layer = DropoutConfig(config.kind, rate, config.data_format, config.noise_shape)
            x = sample(shape, dtype, seed=i)
            check_both_modes(load, portable(layer, len(shape), dtype, seed), layer, x, seed)


def test_seeds_across_the_64_bit_range(load: runtimes.Loader) -> None:
    config = DropoutConfig(Kind.SPATIAL_2D, 0.4, CL)
    x = sample((6, 3, 2, 40), "float32")
    for seed in [1, 2**31 - 2, 2**31 - 1, 2**32 + 5, 2**62, 2**64 - 2, 12345678901234567890]:
        check_both_modes(load, portable(config, 4, "float32", seed), config, x, seed)


def test_a_4_mib_call_with_2_to_the_20_channel_draws(load: runtimes.Loader) -> None:
    """Draw numbers reach 2**20, far past the 2048-entry tables."""
    config = DropoutConfig(Kind.SPATIAL_2D, 0.3, CF)
    x = sample((256, 4096, 1, 1), "float32", seed=3)
    check_both_modes(load, portable(config, 4, "float32", 99), config, x, 99)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "tract"])
def test_masks_past_2_to_the_22_draws_use_a_second_row_of_the_high_table(runtime: str) -> None:
    config = DropoutConfig(Kind.DROPOUT, 0.6)
    x = sample(((1 << 22) + 4099,), "float32", seed=4)
    model = portable(config, 1, "float32", 5)
    check_both_modes(runtimes.PYTHON_RUNTIMES[runtime], model, config, x, 5)


def test_an_empty_batch(load: runtimes.Loader) -> None:
    config = DropoutConfig(Kind.SPATIAL_2D, 0.3, CL)
    x = sample((0, 2, 2, 5), "float32")
    check_both_modes(load, portable(config, 4, "float32", 1), config, x, 1)


def test_a_portable_graph_is_a_pure_function(load: runtimes.Loader) -> None:
    """Two runs of one session answer the same (the Dropout form's second run draws the
    stream of seed + 1: see test_export)."""
    config = DropoutConfig(Kind.SPATIAL_2D, 0.5, CL)
    run = load(portable(config, 4, "float32", 3))
    feeds = {"X": sample((4, 2, 2, 16), "float32"), "training_mode": np.array(True)}
    first, second = run(feeds), run(feeds)
    assert [bits(a) for a in first] == [bits(b) for b in second]


def test_openvino_computes_float64_in_float32() -> None:
    """Why OpenVINO runs no float64 case above (and the README says so): even inference
    mode, the identity, does not give float64 inputs back."""
    config = DropoutConfig(Kind.SPATIAL_2D, 0.5, CL)
    x = np.random.default_rng(0).standard_normal((2, 2, 2, 3))
    y, _ = runtimes.openvino(portable(config, 4, "float64", 1))(
        {"X": x, "training_mode": np.array(False)}
    )
    assert not np.array_equal(y, x)
    assert np.array_equal(y, x.astype(np.float32).astype(np.float64))


def test_onnxruntime_web_reads_a_rank_0_input_as_shape_1(web: runtimes.WebRunner) -> None:
    """Why the rank-0 structure is not run on onnxruntime-web (said in the README)."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["X"], ["Y"])],
        "scalar",
        [onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [])],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)],
    )
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid("", 21)], ir_version=10
    )
    (y,) = web(model.SerializeToString())({"X": np.array(3.0, np.float32)})
    assert y.shape == (1,)


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.77, 1e-9, 0.9999999])
def test_the_keep_threshold_is_exact_at_its_boundary(load: runtimes.Loader, rate: float) -> None:
    """A stream seed whose first draw is the threshold (kept) or one below it (dropped), in
    the graph as in the kernel."""
    threshold = rng.keep_threshold(rate)
    inverse = pow(rng.MULTIPLIER, -1, rng.MODULUS)
    config = DropoutConfig(Kind.DROPOUT, rate)
    x = np.ones(1, np.float32)
    for draw, kept in [(threshold - 1, False), (threshold, True)]:
        stream_seed = draw * inverse % rng.MODULUS
        assert bool(rng.keep_mask(stream_seed, 1, 1, rate)[0]) is kept
        spec = GraphSpec(config, 1, "float32", 21, stream_seed, "portable")
        _, mask = load(build_model(spec).SerializeToString())(
            {"X": x, "training_mode": np.array(True)}
        )
        assert bool(mask[0]) is kept, (rate, draw)


def test_an_export_has_no_random_operator_and_a_plain_training_mode() -> None:
    layer = replace(spec(rate=0.3, data_format=CL), seed=7)
    model = export_layer(layer, mask="portable")
    assert not {node.op_type for node in nodes(model)} & RANDOM_OPS
    assert "training_mode" not in {t.name for t in model.graph.initializer}
    assert [v.name for v in model.graph.input] == ["X", "training_mode"]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["mask"] == "portable" and props["seed"] == "7"
    dropout = export_layer(layer)
    assert "Dropout" in {node.op_type for node in nodes(dropout)}
    assert {p.key: p.value for p in dropout.metadata_props}["mask"] == "dropout"

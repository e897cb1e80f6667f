"""The numpy mask equals what onnxruntime's Dropout draws for the same seed, bit for bit.

Each graph is ``Shape(X)`` -> mask shape -> ``ConstantOfShape(1.0f)`` -> ``Dropout`` (opset 13,
float32 ``ratio`` and bool ``training_mode`` initializers, ``seed = mix_seed(user seed)``),
with Dropout's ``mask`` as the graph output: onnxruntime deletes a Dropout whose mask is unused.
The mask shape is built from ``Shape(X)`` with a ``Where`` that keeps the batch-indexed and
channel axes and puts constants (1, or a noise_shape integer) elsewhere, so N stays symbolic.
The promise holds for onnxruntime's Linux builds (libstdc++'s ``default_random_engine``).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from service.core import rng
from service.core.config import DropoutConfig, Kind
from service.core.kernel import keep_mask_for, mask_shape
from tests.structures import CF, STRUCTURES

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="default_random_engine is libstdc++'s only"
)


#: 32 user seeds: the range's ends, small and consecutive ones, and arbitrary ones.
SEEDS = [0, 1, 2, 3, 4, -1, -2, 2**63 - 1, -(2**63), 2**64 - 1, 2**64 - 2, 42, 1234, 99999]
SEEDS += [int(s) for s in np.random.default_rng(20240607).integers(0, 2**63, 18)]
RATES = [0.1, 0.3, 0.5, 0.77, 0.999]


def _graph(config: DropoutConfig, rank: int, rate: float, seed_attr: int) -> bytes:
    """A serialized model whose output ``mask`` is Dropout's mask for input X of ``rank``."""
    take, consts = _noise_shape_template(config, rank)
    nodes = [helper.make_node("Shape", ["X"], ["input_shape"])]
    if all(take):
        nodes.append(helper.make_node("Identity", ["input_shape"], ["noise_shape"]))
    else:
        nodes.append(helper.make_node("Where", ["take", "input_shape", "consts"], ["noise_shape"]))
    nodes += [
        helper.make_node(
            "ConstantOfShape",
            ["noise_shape"],
            ["ones"],
            value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
        ),
        helper.make_node(
            "Dropout", ["ones", "ratio", "training_mode"], ["dropped", "mask"], seed=seed_attr
        ),
    ]
    inits = [
        numpy_helper.from_array(np.array(rate, dtype=np.float32), "ratio"),
        numpy_helper.from_array(np.array(True), "training_mode"),
    ]
    if not all(take):
        inits.append(numpy_helper.from_array(np.array(take, dtype=np.bool_), "take"))
        inits.append(numpy_helper.from_array(np.array(consts, dtype=np.int64), "consts"))
    graph = helper.make_graph(
        nodes,
        "mask",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [f"d{i}" for i in range(rank)])],
        [helper.make_tensor_value_info("mask", TensorProto.BOOL, [f"m{i}" for i in range(rank)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    serialized: bytes = model.SerializeToString()
    return serialized


def _noise_shape_template(config: DropoutConfig, rank: int) -> tuple[list[bool], list[int]]:
    """Which mask axes take the input's size, and the constants of the others."""
    if config.kind is Kind.DROPOUT:
        noise = config.noise_shape or (None,) * rank
        return [d is None for d in noise], [d or 0 for d in noise]
    channel_axis = 1 if config.data_format is CF else rank - 1
    take = [axis in (0, channel_axis) for axis in range(rank)]
    return take, [0 if t else 1 for t in take]


def _session(config: DropoutConfig, rank: int, rate: float, seed_attr: int) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(
        _graph(config, rank, rate, seed_attr), options, providers=["CPUExecutionProvider"]
    )


def _run(session: Any, shape: tuple[int, ...]) -> NDArray[np.bool_]:
    (mask,) = session.run(["mask"], {"X": np.zeros(shape, dtype=np.float32)})
    assert mask.dtype == np.bool_
    return np.asarray(mask)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize(("config", "shape"), STRUCTURES)
def test_first_run_of_a_fresh_session_draws_our_mask(
    config: DropoutConfig, shape: tuple[int, ...], rate: float
) -> None:
    config = replace(config, rate=rate)
    for seed in SEEDS:
        got = _run(_session(config, len(shape), rate, rng.mix_seed(seed)), shape)
        expected = keep_mask_for(config, shape, seed)
        assert got.shape == expected.shape
        assert np.array_equal(got, expected), f"seed {seed}"


@pytest.mark.parametrize(("config", "shape"), STRUCTURES)
def test_run_j_of_a_session_draws_the_stream_of_stream_seed_plus_j(
    config: DropoutConfig, shape: tuple[int, ...]
) -> None:
    # onnxruntime's generator hands out its seed and adds one: run j of a session uses the
    # engine seeded with stream_seed + j - 1. Our stream seed + 1 is computed directly here.
    size = int(np.prod(mask_shape(config, shape)))
    for seed in SEEDS[:6]:
        stream = rng.mix_seed(seed)
        session = _session(config, len(shape), config.rate, stream)
        for run in range(3):
            expected = rng.keep_mask(stream + run, 1, size, config.rate)
            assert np.array_equal(_run(session, shape).reshape(-1), expected), (seed, run)


@pytest.mark.parametrize("seed_attr", [rng.MODULUS - 1, rng.MODULUS, 0, -5, 2**63 - 1])
def test_raw_seed_attributes_follow_libstdcxx_seeding(seed_attr: int) -> None:
    # The engine starts from (seed as uint64) mod m, and 1 instead of 0: the second run of
    # seed m - 1 is seed m, i.e. state 1. Negative int64 seeds wrap to uint64 first.
    config, shape = STRUCTURES[2]
    session = _session(config, len(shape), 0.5, seed_attr)
    size = int(np.prod(mask_shape(config, shape)))
    for run in range(2):
        stream = seed_attr + run
        if stream >= 2**63:  # the generator's int64 counter wraps
            stream -= 2**64
        expected = rng.keep_mask(stream, 1, size, 0.5)
        assert np.array_equal(_run(session, shape).reshape(-1), expected), run


@pytest.mark.parametrize(("config", "shape"), STRUCTURES[:6])
def test_a_batch_part_at_its_offset_is_that_part_of_the_whole_batch(
    config: DropoutConfig, shape: tuple[int, ...]
) -> None:
    big = (50, *shape[1:])
    seed = 777
    whole = _run(_session(config, len(big), 0.3, rng.mix_seed(seed)), big)
    part = keep_mask_for(replace(config, rate=0.3), (7, *shape[1:]), seed, sample_offset=31)
    assert np.array_equal(whole[31:38], part)

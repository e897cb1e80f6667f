"""The onnxruntime engine answers exactly what the numpy kernel answers, call after call."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, ClassVar

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from service.core import kernel, rng
from service.core.config import DropoutConfig, Kind
from service.errors import (
    BatchSizeMismatch,
    NoiseShapeMismatch,
    RankMismatch,
    UnsupportedDtype,
    UnsupportedOnnxDtype,
)
from service.onnx.engine import OnnxEngine, stream_seed_at
from tests.structures import CF, CL, STRUCTURES

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="default_random_engine is libstdc++'s only"
)

UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
RATES = [0.5, 0.3, 0.77, 0.2, 0.4]

#: tests/structures.py's layers at several rates, and the rates and batch only a run can show.
CASES: list[tuple[DropoutConfig, tuple[int, ...]]] = [
    (replace(config, rate=rate), shape)
    for (config, shape), rate in zip(STRUCTURES, itertools.cycle(RATES))
]
CASES += [
    (DropoutConfig(Kind.SPATIAL_2D, 1.0, CL), (2, 3, 3, 4)),
    (DropoutConfig(Kind.SPATIAL_2D, 0.0, CF), (2, 3, 3, 4)),
    (DropoutConfig(Kind.SPATIAL_2D, 0.5, CL), (0, 3, 3, 4)),
]
OFFSETS = [0, 1, 17, 2**40]


@pytest.fixture(scope="module")
def engine() -> Iterator[OnnxEngine]:
    onnx_engine = OnnxEngine()
    yield onnx_engine
    onnx_engine.close()


def bits(a: NDArray[Any]) -> NDArray[Any]:
    return np.asarray(a).view(UINT[np.asarray(a).dtype.itemsize])


def sample(shape: tuple[int, ...], dtype: str, seed: int = 0) -> NDArray[Any]:
    x = np.asarray(np.random.default_rng(seed).standard_normal(shape) * 30, dtype=dtype)
    flat = x.reshape(-1)
    for at, value in enumerate([np.nan, -0.0, np.inf][: flat.size]):
        flat[(at * 5) % flat.size] = value
    return x


def assert_same_result(got: kernel.DropoutResult, expected: kernel.DropoutResult) -> None:
    out, want = np.asarray(got.output), np.asarray(expected.output)
    assert out.shape == want.shape and out.dtype == want.dtype
    assert np.array_equal(bits(out), bits(want))
    assert got.mask.shape == expected.mask.shape
    assert np.array_equal(got.mask, expected.mask)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize(("config", "shape"), CASES)
def test_every_call_is_the_kernel(
    engine: OnnxEngine, config: DropoutConfig, shape: tuple[int, ...], dtype: str
) -> None:
    x = sample(shape, dtype)
    for offset in OFFSETS:
        for training in (True, False):
            seed = offset + 3
            got = engine.apply(config, x, training=training, seed=seed, sample_offset=offset)
            expected = kernel.apply(config, x, training=training, seed=seed, sample_offset=offset)
            assert_same_result(got, expected)


class RecordingSession(ort.InferenceSession):  # type: ignore[misc]
    """A real onnxruntime session that keeps what each of its runs returned."""

    runs: ClassVar[list[list[Any]]] = []

    def run(self, *args: Any, **kwargs: Any) -> list[Any]:
        outputs: list[Any] = super().run(*args, **kwargs)
        RecordingSession.runs.append(outputs)
        return outputs


@pytest.mark.parametrize("training", [True, False])
def test_the_answer_is_what_an_onnxruntime_session_returned(
    monkeypatch: pytest.MonkeyPatch, training: bool
) -> None:
    # Agreeing with the kernel cannot show that onnxruntime ran: the kernel agrees by design.
    monkeypatch.setattr(ort, "InferenceSession", RecordingSession)
    monkeypatch.setattr(RecordingSession, "runs", [])
    fresh = OnnxEngine()  # no session cached before the recorder was in place
    try:
        config, shape = CASES[0]
        x = sample(shape, "float32")
        for seed in (1, 2):
            before = len(RecordingSession.runs)
            got = fresh.apply(config, x, training=training, seed=seed)
            assert len(RecordingSession.runs) == before + 1
            output, mask = RecordingSession.runs[-1]
            assert got.output is output and got.mask is mask
    finally:
        fresh.close()


@pytest.mark.parametrize("rate", [0.0, 0.5])
@pytest.mark.parametrize("training", [True, False])
def test_the_output_is_a_copy_even_when_identity(
    engine: OnnxEngine, training: bool, rate: float
) -> None:
    x = sample((2, 3, 3, 4), "float32")
    kept = x.copy()
    got = engine.apply(DropoutConfig(Kind.SPATIAL_2D, rate), x, training=training, seed=5)
    assert not np.shares_memory(got.output, x)
    np.asarray(got.output)[...] = 0  # writing the answer leaves the caller's input alone
    assert np.array_equal(bits(x), bits(kept))


def test_repeated_and_interleaved_calls_keep_agreeing(engine: OnnxEngine) -> None:
    # A cached session would have advanced its stream after one run: every call must not.
    config, shape = CASES[0]
    x = sample(shape, "float32")
    calls = [(7, True), (7, True), (8, True), (7, False), (7, True), (8, True), (7, True)]
    for seed, training in calls:
        got = engine.apply(config, x, training=training, seed=seed)
        assert_same_result(got, kernel.apply(config, x, training=training, seed=seed))


def test_layers_that_differ_only_by_name_or_batch_size_agree(engine: OnnxEngine) -> None:
    x = sample((2, 3, 3, 4), "float32")
    for config in [
        DropoutConfig(Kind.SPATIAL_2D, 0.5, CL, name="a"),
        DropoutConfig(Kind.SPATIAL_2D, 0.5, CL, batch_size=2, name="b"),
        DropoutConfig(Kind.SPATIAL_2D, 0.6, CL, name="a"),
    ]:
        got = engine.apply(config, x, training=True, seed=1)
        assert_same_result(got, kernel.apply(config, x, training=True, seed=1))


def test_concurrent_calls_agree(engine: OnnxEngine) -> None:
    config, shape = CASES[1]
    x = sample(shape, "float64")
    jobs = [(seed % 3, seed % 2 == 0) for seed in range(24)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(
            pool.map(lambda job: engine.apply(config, x, training=job[1], seed=job[0]), jobs)
        )
    for (seed, training), got in zip(jobs, results, strict=True):
        assert_same_result(got, kernel.apply(config, x, training=training, seed=seed))


def test_fortran_ordered_inputs_are_read_as_their_values(engine: OnnxEngine) -> None:
    config, shape = CASES[0]
    x = np.asfortranarray(sample(shape, "float32"))
    got = engine.apply(config, x, training=True, seed=2)
    assert_same_result(got, kernel.apply(config, np.ascontiguousarray(x), training=True, seed=2))


def test_bfloat16_is_refused_and_other_dtypes_as_the_kernel_does(engine: OnnxEngine) -> None:
    config = DropoutConfig(Kind.SPATIAL_2D, 0.5)
    with pytest.raises(UnsupportedOnnxDtype, match=r"^No ONNX model for bfloat16: onnxruntime"):
        engine.apply(config, np.zeros((1, 2, 2, 3), ml_dtypes.bfloat16), training=True, seed=1)
    with pytest.raises(UnsupportedDtype):
        engine.apply(config, np.zeros((1, 2, 2, 3), np.int32), training=True, seed=1)
    with pytest.raises(UnsupportedDtype):
        engine.apply(config, np.zeros((1, 2, 2, 3), ">f4"), training=True, seed=1)


@pytest.mark.parametrize(
    ("config", "shape", "error"),
    [
        (DropoutConfig(Kind.SPATIAL_2D, 0.5, name="sd"), (2, 3, 4), RankMismatch),
        (DropoutConfig(Kind.SPATIAL_1D, 0.5, batch_size=3), (2, 3, 4), BatchSizeMismatch),
        (DropoutConfig(Kind.DROPOUT, 0.5, noise_shape=(None, 3)), (2, 4), NoiseShapeMismatch),
    ],
)
def test_shape_errors_are_the_kernels(
    engine: OnnxEngine, config: DropoutConfig, shape: tuple[int, ...], error: type[Exception]
) -> None:
    x = np.zeros(shape, np.float32)
    with pytest.raises(error) as expected:
        kernel.apply(config, x, training=True, seed=1)
    with pytest.raises(error) as got:
        engine.apply(config, x, training=True, seed=1)
    assert str(got.value) == str(expected.value)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**64 - 1),
    offset=st.integers(0, 2**62 - 1),
    channels=st.integers(1, 64),
    rate=st.floats(0.01, 0.99),
)
def test_an_offset_is_a_jump_of_the_stream_seed(
    seed: int, offset: int, channels: int, rate: float
) -> None:
    config = DropoutConfig(Kind.SPATIAL_1D, rate)
    mask_shape = (2, 1, channels)
    stream = rng.mix_seed(seed)
    jumped = stream_seed_at(config, mask_shape, stream, offset)
    assert 1 <= jumped < rng.MODULUS
    size = 2 * channels
    expected = rng.keep_mask(stream, offset * channels + 1, size, rate)
    assert np.array_equal(rng.keep_mask(jumped, 1, size, rate), expected)

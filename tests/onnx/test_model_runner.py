"""The model runner in process: sessions shared and bounded, the batched Monte Carlo run equal
to one run per sample, and refusals that need no server to show."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from service.compose import compose
from service.core.config import DataFormat, Kind
from service.errors import ModelLoadFailed
from service.layers.resolve import ResolvedSpec
from service.models.serving import Runner, RunnerCache
from tests.api.test_models import first_relu, images, plain

LAYER = ResolvedSpec(
    kind=Kind.SPATIAL_2D,
    rate=0.5,
    data_format=DataFormat.CHANNELS_FIRST,
    batch_size=None,
    name="sd",
    trainable=True,
    seed=None,
    dtype=None,
    noise_shape=None,
)


def composed(seed: int = 3) -> bytes:
    return compose(
        plain(), LAYER, after=[first_relu(plain()), "features"], seed=seed, max_nodes=10_000
    )


def test_one_runner_per_digest_built_once_for_many_threads() -> None:
    cache = RunnerCache(max_bytes=10**9, max_nodes=10_000, intra_op_threads=1)
    model = composed()
    with ThreadPoolExecutor(8) as pool:
        runners = list(pool.map(lambda _: cache.get("a", model), range(16)))
    assert all(runner is runners[0] for runner in runners)


def test_the_cache_closes_the_least_recently_used_past_its_bound() -> None:
    first, second = composed(1), composed(2)
    cache = RunnerCache(
        max_bytes=len(first) + len(second) // 2, max_nodes=10_000, intra_op_threads=1
    )
    one = cache.get("one", first)
    cache.get("two", second)
    assert cache.cached("one") is None and cache.cached("two") is not None
    assert cache.get("one", first) is not one  # built again


def test_the_batched_monte_carlo_run_equals_one_run_per_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runner = Runner(composed(), max_nodes=10_000, intra_op_threads=1)
    x = {"image": images(2)}
    common = {"sample_offset": 1, "max_elements": 10**8}
    feeds: list[dict[str, Any]] = []
    original = runner._run

    def counted(full: Any, masks: Any, *, training: bool, outputs: Any = None) -> dict[str, Any]:
        feeds.append(dict(full))
        return original(full, masks, training=training, outputs=outputs)

    monkeypatch.setattr(runner, "_run", counted)
    batched = runner.run(x, training=True, seed=9, samples=5, **common)
    assert len(feeds) == 1 and feeds[0]["image"].shape == (10, 3, 16, 16)  # one run, T*N rows
    for t in range(5):
        single = runner.run(x, training=True, seed=9 + 2 * t, samples=None, **common)
        for name, value in single.items():
            assert np.array_equal(batched[name][t].view(np.uint32), value.view(np.uint32))


def test_a_model_onnxruntime_cannot_load_is_refused() -> None:
    import onnx

    proto = onnx.load_from_string(plain())
    proto.graph.node[0].op_type = "NoSuchOperator"
    proto.graph.node[0].domain = "com.example"
    proto.opset_import.add(domain="com.example", version=1)
    with pytest.raises(ModelLoadFailed):
        Runner(proto.SerializeToString(), max_nodes=10_000, intra_op_threads=1)

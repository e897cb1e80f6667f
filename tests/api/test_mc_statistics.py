"""Monte Carlo statistics over /v2 on a stored model composed from a torch export: each is the
statistic of the samples the same request returns without mc_statistics, the outputs pick
statistics or whole outputs, adaptive sampling is reproducible, and bad requests are 400s."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from service.uncertainty import CLASS_STATISTICS
from tests.api.helpers import unique
from tests.api.test_models import _body, composed, images, put
from tests.conftest import Server, client_of, serving

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="default_random_engine is libstdc++'s only"
)


@pytest.fixture(scope="module")
def stats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serving(
        tmp_path_factory,
        "mcstats",
        max_mc_samples=64,
        max_model_bytes=4_000_000,
        max_tensor_elements=100_000,
    )


@pytest.fixture(scope="module")
def api(stats_server: Server) -> Iterator[httpx.Client]:
    yield from client_of(stats_server)


@pytest.fixture(scope="module")
def model(api: httpx.Client) -> str:
    name = unique("mc")
    response = put(api, name, composed(api))
    assert response.status_code == 201, response.text
    return name


def post(
    api: httpx.Client,
    model: str,
    x: NDArray[Any],
    outputs: list[str] | None = None,
    **parameters: Any,
) -> httpx.Response:
    body = _body(x, **parameters)
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return api.post(f"/v2/models/{model}/infer", json=body)


def ask(
    api: httpx.Client,
    model: str,
    x: NDArray[Any],
    outputs: list[str] | None = None,
    **parameters: Any,
) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
    response = post(api, model, x, outputs, **parameters)
    assert response.status_code == 200, response.text
    answer = response.json()
    arrays = {
        out["name"]: np.array(out["data"], np.float32).reshape(out["shape"])
        for out in answer["outputs"]
    }
    return arrays, answer["parameters"]


def refused(
    api: httpx.Client, model: str, x: NDArray[Any], outputs: list[str] | None = None, **p: Any
) -> str:
    response = post(api, model, x, outputs, **p)
    assert response.status_code == 400, response.text
    return str(response.json()["error"])


def softmax(logits: NDArray[Any]) -> NDArray[np.float64]:
    wide = logits.astype(np.float64)
    e = np.exp(wide - wide.max(-1, keepdims=True))
    return np.asarray(e / e.sum(-1, keepdims=True))


def test_each_statistic_is_that_of_the_samples(api: httpx.Client, model: str) -> None:
    x, t = images(3), 12
    samples, _ = ask(api, model, x, mc_samples=t, seed=40)
    asked = "mean,variance,std,sem,quantiles"
    stats, params = ask(
        api, model, x, mc_samples=t, seed=40, mc_statistics=asked, mc_quantiles="0.05,0.5,0.95"
    )
    assert params == {"training": True, "seed": 40, "mc_samples": t, "mc_samples_used": t}
    assert set(stats) == {f"{out}_{n}" for out in ("features", "logits") for n in asked.split(",")}
    for out in ("features", "logits"):
        wide = samples[out].astype(np.float64)
        want = {
            "mean": wide.mean(0),
            "variance": wide.var(0),
            "std": wide.std(0),
            "sem": np.sqrt(wide.var(0) / t),
        }
        for name, value in want.items():
            np.testing.assert_allclose(stats[f"{out}_{name}"], value, rtol=3e-7, atol=1e-30)
        quantiles = np.quantile(wide, [0.05, 0.5, 0.95], axis=0).astype(np.float32)
        assert np.array_equal(stats[f"{out}_quantiles"], quantiles)


def test_class_statistics_of_logits_with_softmax(api: httpx.Client, model: str) -> None:
    x, t = images(4), 16
    samples, _ = ask(api, model, x, mc_samples=t, seed=9)
    stats, _ = ask(
        api,
        model,
        x,
        mc_samples=t,
        seed=9,
        mc_statistics=",".join(("mean", *CLASS_STATISTICS)),
        mc_softmax=True,
        outputs=["logits"],
    )
    p = softmax(samples["logits"])  # (T, 4, 5)
    mean = p.mean(0)
    h_mean = -(mean * np.log(mean)).sum(-1)
    h_each = -(p * np.log(p)).sum(-1).mean(0)
    votes = np.stack([(p.argmax(-1) == c).sum(0) for c in range(5)], -1)
    top = np.sort(mean, -1)
    want = {
        "mean": mean,
        "entropy": h_mean,
        "expected_entropy": h_each,
        "mutual_information": np.maximum(h_mean - h_each, 0),
        "variation_ratio": 1 - votes.max(-1) / t,
        "margin": top[:, -1] - top[:, -2],
        "max_probability": top[:, -1],
    }
    assert set(stats) == {f"logits_{name}" for name in want}
    for name, value in want.items():
        np.testing.assert_allclose(stats[f"logits_{name}"], value, rtol=2e-6, atol=1e-7)
    assert (stats["logits_mutual_information"] > 0).any()


def test_outputs_name_a_statistic_or_a_model_output(api: httpx.Client, model: str) -> None:
    x = images(2)
    both = "mean,entropy"
    one, _ = ask(
        api,
        model,
        x,
        mc_samples=4,
        seed=1,
        mc_statistics=both,
        mc_softmax=True,
        outputs=["logits_entropy"],
    )
    assert list(one) == ["logits_entropy"]
    whole, _ = ask(api, model, x, mc_samples=4, seed=1, mc_statistics="mean", outputs=["features"])
    assert list(whole) == ["features_mean"]
    message = refused(api, model, x, ["logits_variance"], mc_samples=4, mc_statistics="mean")
    assert "logits_variance" in message and "logits_mean" in message


def test_adaptive_sampling_is_a_fixed_t_request_that_stopped(api: httpx.Client, model: str) -> None:
    x = images(2)
    common = {"seed": 21, "mc_statistics": "mean,sem", "outputs": ["logits"]}
    loose, params = ask(api, model, x, mc_samples=64, mc_tolerance=0.05, **common)
    used = params["mc_samples_used"]
    assert params["mc_samples"] == 64 and 8 <= used < 64 and used % 8 == 0
    assert loose["logits_sem"].max() <= 0.05
    again, same = ask(api, model, x, mc_samples=64, mc_tolerance=0.05, **common)
    assert same == params
    fixed, fixed_params = ask(api, model, x, mc_samples=used, **common)
    assert fixed_params["mc_samples_used"] == used
    for name, value in loose.items():
        assert np.array_equal(value.view(np.uint32), again[name].view(np.uint32))
        assert np.array_equal(value.view(np.uint32), fixed[name].view(np.uint32))
    # A tolerance no run meets takes the ceiling.
    _, tight = ask(api, model, x, mc_samples=20, mc_tolerance=1e-12, **common)
    assert tight["mc_samples_used"] == 20


def test_statistics_are_bounded_by_what_is_returned_not_by_t(api: httpx.Client, model: str) -> None:
    x = images(16)  # 16 images of 768 inputs: 64 samples would be 786,432 > 100,000 elements
    assert post(api, model, x, mc_samples=64).status_code == 413
    stats, params = ask(api, model, x, mc_samples=64, seed=3, mc_statistics=True)
    assert params["mc_samples_used"] == 64 and stats["logits_mean"].shape == (16, 5)
    # Quantiles hold the samples, so they are bounded like the samples themselves.
    assert (
        post(
            api, model, x, mc_samples=64, mc_statistics="quantiles", mc_quantiles="0.5"
        ).status_code
        == 413
    )


def test_an_empty_batch_has_empty_statistics(api: httpx.Client, model: str) -> None:
    x = images(1)[:0]
    stats, params = ask(
        api,
        model,
        x,
        mc_samples=16,
        seed=2,
        mc_statistics="mean,entropy",
        mc_softmax=True,
        mc_tolerance=0.01,
    )
    assert stats["logits_mean"].shape == (0, 5) and stats["logits_entropy"].shape == (0,)
    assert params["mc_samples_used"] == 8  # nothing to converge: the first check stops


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"mc_statistics": "mean,median"}, "Unknown statistic 'median'"),
        ({"mc_statistics": ""}, "known: mean, variance, std, sem, quantiles, entropy"),
        ({"mc_statistics": "quantiles"}, "needs mc_quantiles"),
        ({"mc_statistics": "quantiles", "mc_quantiles": "0.5,1.5"}, "'1.5' is not a level"),
        ({"mc_statistics": "mean", "mc_quantiles": "0.5"}, "quantiles is not asked for"),
        ({"mc_tolerance": 0.1}, "mc_tolerance needs mc_statistics"),
        ({"mc_statistics": True, "mc_tolerance": 0}, "finite number above 0"),
        ({"mc_statistics": "entropy"}, "not class probabilities"),
        ({"mc_statistics": "entropy", "mc_softmax": True, "mc_class_axis": 2}, "not an axis"),
    ],
)
def test_bad_statistics_requests_are_400s_that_say_why(
    api: httpx.Client, model: str, parameters: dict[str, Any], message: str
) -> None:
    outputs = parameters.pop("outputs", ["logits"])
    message_got = refused(api, model, images(2), outputs, mc_samples=4, **parameters)
    assert message in message_got

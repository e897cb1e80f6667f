"""The service's statistics against the uncertainty libraries themselves: baal's BALD and
Entropy, torch-uncertainty's MutualInformation and VariationRatio, each computed on the samples
the service returns for the same seed, from a float64 classifier exported by torch.onnx,
composed and served."""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from service.client import Client
from tests.api.helpers import unique
from tests.conftest import Server

with warnings.catch_warnings():  # both warn of their own dependencies' deprecations on import
    warnings.simplefilter("ignore")
    from baal.active.heuristics import BALD, Entropy
    from torch_uncertainty.metrics.classification import MutualInformation, VariationRatio

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="default_random_engine is libstdc++'s only"
)

T = 24
CLASSES = 7


class Classifier(torch.nn.Module):
    """Feature maps, then class probabilities (or logits): float64 throughout."""

    def __init__(self, probabilities: bool) -> None:
        super().__init__()
        # onnxruntime's CPU build has no float64 Conv: a per-channel scale and shift instead.
        self.scale = torch.nn.Parameter(torch.randn(1, 6, 1, 1))
        self.shift = torch.nn.Parameter(torch.randn(1, 6, 1, 1))
        self.head = torch.nn.Linear(6 * 4 * 4, CLASSES)
        self.probabilities = probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(x * self.scale + self.shift)
        logits = self.head(features.flatten(1)) * 3
        return torch.softmax(logits, -1) if self.probabilities else logits


def exported(probabilities: bool) -> bytes:
    torch.manual_seed(1)
    module = Classifier(probabilities).double().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(2, 6, 4, 4, dtype=torch.float64),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["probs"],
            dynamic_axes={"x": {0: "batch"}, "probs": {0: "batch"}},
        )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def sd(server: Server) -> Iterator[Client]:
    with Client(server.url) as client:
        yield client


def served(sd: Client, probabilities: bool) -> str:
    """The classifier with a spatial dropout after its ReLU, stored."""
    layer = sd.create_layer(
        {
            "kind": "spatial_dropout_2d",
            "rate": 0.4,
            "data_format": "channels_first",
            "dtype": "float64",
            "name": unique("lib"),
        }
    )
    model = exported(probabilities)
    import onnx

    relu = next(n.output[0] for n in onnx.load_from_string(model).graph.node if n.op_type == "Relu")
    name = unique("clf")
    sd.put_model(name, sd.compose(layer["name"], model, after=[relu], seed=5).model)
    return name


def inputs() -> dict[str, NDArray[Any]]:
    return {"x": np.random.default_rng(8).standard_normal((6, 6, 4, 4))}


def samples_and_statistics(
    sd: Client, model: str, names: list[str], **options: Any
) -> tuple[NDArray[np.float64], dict[str, NDArray[Any]]]:
    samples = sd.infer(model, inputs(), mc_samples=T, seed=77).outputs["probs"]
    stats = sd.infer(model, inputs(), mc_samples=T, seed=77, mc_statistics=names, **options)
    assert samples.dtype == np.float64 and samples.shape == (T, 6, CLASSES)
    assert stats.samples_used == T
    return samples, stats.outputs


def close(got: NDArray[Any], want: Any) -> None:
    np.testing.assert_allclose(got, np.asarray(want, np.float64), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("softmax", [False, True], ids=["probabilities", "logits"])
def test_baal_bald_and_entropy(sd: Client, softmax: bool) -> None:
    model = served(sd, probabilities=not softmax)
    samples, stats = samples_and_statistics(
        sd, model, ["entropy", "mutual_information"], mc_softmax=softmax
    )
    probs = torch.softmax(torch.from_numpy(samples), -1).numpy() if softmax else samples
    layout = np.moveaxis(probs, 0, -1)  # baal's [N, C, T]
    close(stats["probs_mutual_information"], BALD().compute_score(layout))
    close(stats["probs_entropy"], Entropy().compute_score(layout))
    assert (stats["probs_mutual_information"] > 1e-3).all()  # the passes disagree


def test_torch_uncertainty_mutual_information_and_variation_ratio(sd: Client) -> None:
    model = served(sd, probabilities=True)
    samples, stats = samples_and_statistics(sd, model, ["mutual_information", "variation_ratio"])
    probs = torch.from_numpy(samples)
    mi = MutualInformation(reduction=None)
    mi.update(probs.transpose(0, 1))  # its (B, N, C)
    close(stats["probs_mutual_information"], mi.compute())
    with warnings.catch_warnings():  # that it keeps every prediction
        warnings.simplefilter("ignore")
        vr = VariationRatio(probabilistic=False, reduction=None)
    vr.update(probs)  # it transposes to (B, N, C) itself
    theirs = vr.compute().numpy()
    # torch-uncertainty counts the votes for argmax of the mean probabilities; the service
    # (Freeman's, Gal's) those for the modal vote. They agree wherever that class is the mode.
    votes = np.stack([(samples.argmax(-1) == c).sum(0) for c in range(CLASSES)], -1)
    modal = votes.argmax(-1) == samples.mean(0).argmax(-1)
    # It divides the vote count in torch's default float32: equal to float32's precision.
    np.testing.assert_allclose(stats["probs_variation_ratio"][modal], theirs[modal], rtol=2e-7)
    close(stats["probs_variation_ratio"], 1 - votes.max(-1) / T)
    assert modal.any()

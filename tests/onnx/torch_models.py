"""Models the compose tests export themselves with torch.onnx, once per process (slow), and
the layer they insert."""

from __future__ import annotations

import io
import warnings
from functools import cache
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from numpy.typing import NDArray

from service.core.config import DataFormat, Kind
from service.layers.resolve import ResolvedSpec

#: (exporter, opset): the TorchScript exporter at 17, the dynamo exporter at its default.
EXPORTERS: list[tuple[str, int | None]] = [("torchscript", 17), ("dynamo", None)]
NAMES = ["cnn", "resnet18"]
SPATIAL = 32  # resnet18 at 32x32: every stage runs, and the tests stay quick


class SmallCNN(torch.nn.Module):
    """Two outputs: the feature maps (N, 8, 8, 8) and the logits (N, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(6, 8, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.head = torch.nn.Linear(8 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.pool(torch.relu(self.conv2(torch.relu(self.conv1(x)))))
        return features, self.head(features.flatten(1))


def network(name: str) -> tuple[torch.nn.Module, tuple[int, ...], list[str]]:
    """The module (eval mode, fixed weights), its input shape and its output names."""
    torch.manual_seed(0)
    if name == "cnn":
        return SmallCNN().eval(), (2, 3, 16, 16), ["features", "logits"]
    import torchvision

    return torchvision.models.resnet18(weights=None).eval(), (2, 3, SPATIAL, SPATIAL), ["logits"]


@cache
def exported(name: str, exporter: str, opset: int | None) -> bytes:
    """The network exported by torch.onnx (input "image")."""
    module, shape, outputs = network(name)
    example = torch.randn(shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation and exporter chatter
        if exporter == "torchscript":
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=["image"],
                output_names=outputs,
            )
            return buffer.getvalue()
        program = torch.onnx.export(
            module, (example,), dynamo=True, input_names=["image"], output_names=outputs
        )
        assert program is not None
        program.save(buffer)
    return buffer.getvalue()


def image(name: str, seed: int = 1) -> NDArray[np.float32]:
    _, shape, _ = network(name)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run(
    model: bytes,
    feeds: dict[str, Any],
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
) -> list[NDArray[Any]]:
    """One run of a fresh session (the first run: the stream /apply draws)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    outputs: list[NDArray[Any]] = session.run(None, feeds)
    return outputs


def spec(
    kind: Kind = Kind.SPATIAL_2D,
    rate: float = 0.5,
    name: str = "sd",
    data_format: DataFormat = DataFormat.CHANNELS_FIRST,
) -> ResolvedSpec:
    """A layer to insert, unseeded; plain dropout has no data format."""
    return ResolvedSpec(
        kind=kind,
        rate=rate,
        data_format=None if kind is Kind.DROPOUT else data_format,
        batch_size=None,
        name=name,
        trainable=True,
        seed=None,
        dtype=None,
        noise_shape=None,
    )

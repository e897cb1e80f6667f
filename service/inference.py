"""Inference on protocol-neutral types: what an infer call asks, answers and serves.

The Open Inference Protocol has two transports (REST with its binary extension, gRPC); each
decodes its wire form into an ``InferRequest``, hands it to ``DataPlane.infer`` and encodes the
``InferResult`` back. Nothing here knows about bytes on a wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from service.params import Engine, McSamples, SampleOffset, Seed, Training
from service.uncertainty import STATISTICS, Statistics, statistics_of

#: A request or response parameter's value, as the protocol allows it.
Parameter = StrictBool | StrictInt | StrictFloat | StrictStr

#: The name of every model's only version: the protocol wants one, and nothing is versioned.
MODEL_VERSION: Final = "1"

#: The platform every model's metadata names.
PLATFORM: Final = "spatial-dropout"


class InferParameters(BaseModel):
    """The request parameters models and layers read; others are allowed and ignored."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Parameter] = Field(init=False)

    training: Training = False
    seed: Seed | None = Field(
        default=None,
        description="Seed of the masks; default: the layer's seed, else one the server draws. "
        "Insertion i of a composed model takes seed + i.",
    )
    sample_offset: SampleOffset = 0
    engine: Engine = "numpy"
    mc_samples: McSamples | None = Field(
        default=None,
        description="Monte Carlo samples T of a composed model (training implied): every "
        "output gains a leading axis of T; sample t is the training call with seed + t*K, K "
        "the number of inserted layers.",
    )
    mc_statistics: StrictBool | StrictStr = Field(
        default=False,
        description="With mc_samples: true, each output OUT comes back as OUT_mean and "
        "OUT_variance (population variance over the T samples); or a comma-separated list of "
        "statistics, each answered as OUT_<name>: " + ", ".join(STATISTICS) + ".",
    )
    mc_class_axis: StrictInt = Field(
        default=-1, description="The class axis of each output, for the class statistics."
    )
    mc_softmax: StrictBool = Field(
        default=False,
        description="Softmax each pass's output along the class axis first (it holds logits); "
        "false: it holds probabilities already.",
    )
    mc_quantiles: StrictStr | None = Field(
        default=None,
        description='Quantile levels for the statistic quantiles, comma-separated ("0.05,0.95").',
    )
    mc_tolerance: StrictFloat | StrictInt | None = Field(
        default=None,
        description="Adaptive sampling: stop once the largest Monte Carlo standard error of the "
        "mean, over every element of the outputs asked for, is at most this (checked every 8 "
        "samples); mc_samples is the ceiling. The answer says mc_samples_used.",
    )
    binary_data_output: StrictBool = Field(
        default=False, description="Answer every output as binary data (unless it says)."
    )

    def statistics(self) -> Statistics | None:
        """The Monte Carlo statistics these parameters ask for (None: the samples themselves);
        InvalidInferRequest where they ask for them wrongly."""
        tolerance = self.mc_tolerance
        return statistics_of(
            self.mc_statistics,
            class_axis=self.mc_class_axis,
            softmax=self.mc_softmax,
            quantiles=self.mc_quantiles,
            tolerance=None if tolerance is None else float(tolerance),
        )


@dataclass(frozen=True, slots=True)
class InferRequest:
    """One infer call: named input arrays, typed parameters, and the outputs wanted.

    ``outputs`` None asks for the model's default outputs (a layer: its output; a model: all).
    """

    request_id: str | None
    inputs: Mapping[str, NDArray[Any]]
    parameters: InferParameters = field(default_factory=InferParameters)
    outputs: tuple[str, ...] | None = None

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.inputs.values())


@dataclass(frozen=True, slots=True)
class InferResult:
    """An infer call's answer: named output arrays and the parameters to replay it with."""

    model_name: str
    model_version: str
    request_id: str | None
    parameters: dict[str, Parameter]
    outputs: dict[str, NDArray[Any]]

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.outputs.values())


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    """An input or output of a model: its V2 datatype and shape (-1 where any size goes)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    """What the protocol's model metadata call answers."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]
    parameters: dict[str, Parameter | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "parameters": dict(self.parameters),
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
        }

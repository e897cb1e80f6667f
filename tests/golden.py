"""Golden masks (True = kept): the independent reference for every protocol's answers.

Rows are samples and columns channels for the spatial kinds, flat for dropout. Each was checked
against onnxruntime 1.32 (CPU, Linux): a fresh session of Shape -> ConstantOfShape ->
Dropout(seed=mix_seed(seed)) over the batch from sample 0 to sample_offset + N gave these rows
(tests/core/test_onnxruntime_stream.py builds that graph). They pin the service's masks forever:
never update them to follow a code change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.core.config import DataFormat, DropoutConfig, Kind

CL, CF = DataFormat.CHANNELS_LAST, DataFormat.CHANNELS_FIRST


@dataclass(frozen=True)
class Golden:
    seed: int
    config: DropoutConfig
    shape: tuple[int, ...]
    offset: int
    mask: list[Any]


GOLDEN = [
    Golden(
        0,
        DropoutConfig(Kind.SPATIAL_2D, 0.5, CL),
        (3, 2, 2, 5),
        0,
        [[0, 0, 1, 0, 1], [1, 0, 1, 0, 0], [1, 0, 1, 0, 0]],
    ),
    Golden(
        42,
        DropoutConfig(Kind.SPATIAL_1D, 0.3, CF),
        (2, 8, 4),
        0,
        [[1, 1, 1, 0, 0, 1, 0, 0], [0, 1, 0, 1, 1, 1, 0, 1]],
    ),
    Golden(
        2**64 - 1,
        DropoutConfig(Kind.SPATIAL_3D, 0.77, CL),
        (2, 1, 1, 1, 6),
        5,
        [[0, 1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]],
    ),
    Golden(
        7,
        DropoutConfig(Kind.DROPOUT, 0.5),
        (2, 3, 4),
        0,
        [1, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0],
    ),
    Golden(
        123,
        DropoutConfig(Kind.DROPOUT, 0.1, noise_shape=(1, None, 1)),
        (4, 10, 3),
        3,
        [1, 0, 1, 1, 1, 1, 1, 1, 1, 1],
    ),
]

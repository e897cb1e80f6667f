"""Layer structures the ONNX tests share: every kind, both data formats, several ranks, and
the noise_shape forms, each with an input shape that exercises it."""

from __future__ import annotations

from service.core.config import DataFormat, DropoutConfig, Kind

CL, CF = DataFormat.CHANNELS_LAST, DataFormat.CHANNELS_FIRST

#: (config, input shape)
STRUCTURES: list[tuple[DropoutConfig, tuple[int, ...]]] = [
    (DropoutConfig(Kind.SPATIAL_1D, 0.5, CL), (4, 9, 6)),
    (DropoutConfig(Kind.SPATIAL_1D, 0.5, CF), (3, 7, 2)),
    (DropoutConfig(Kind.SPATIAL_2D, 0.5, CL), (5, 3, 2, 8)),
    (DropoutConfig(Kind.SPATIAL_2D, 0.5, CF), (6, 16, 2, 3)),
    (DropoutConfig(Kind.SPATIAL_3D, 0.5, CL), (2, 2, 3, 2, 33)),
    (DropoutConfig(Kind.SPATIAL_3D, 0.5, CF), (3, 5, 2, 1, 2)),
    (DropoutConfig(Kind.DROPOUT, 0.5), ()),
    (DropoutConfig(Kind.DROPOUT, 0.5), (40,)),
    (DropoutConfig(Kind.DROPOUT, 0.5), (3, 4, 5)),
    (DropoutConfig(Kind.DROPOUT, 0.5, noise_shape=(None, 1, None)), (4, 6, 5)),
    (DropoutConfig(Kind.DROPOUT, 0.5, noise_shape=(1, None, 1)), (4, 6, 5)),
]

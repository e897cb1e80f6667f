"""What the kernel needs to know of a layer: a frozen value with no HTTP or storage in it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    DROPOUT = "dropout"
    SPATIAL_1D = "spatial_dropout_1d"
    SPATIAL_2D = "spatial_dropout_2d"
    SPATIAL_3D = "spatial_dropout_3d"

    @property
    def rank(self) -> int | None:
        """The exact input rank the kind requires (None: any rank, as Keras's Dropout)."""
        return _RANKS[self]


_RANKS: dict[Kind, int | None] = {
    Kind.DROPOUT: None,
    Kind.SPATIAL_1D: 3,
    Kind.SPATIAL_2D: 4,
    Kind.SPATIAL_3D: 5,
}


class DataFormat(StrEnum):
    CHANNELS_LAST = "channels_last"
    CHANNELS_FIRST = "channels_first"


@dataclass(frozen=True, slots=True)
class DropoutConfig:
    """A resolved layer: everything that decides its output, and its name for messages.

    ``noise_shape`` is only meaningful for ``Kind.DROPOUT``: None means element-wise dropout
    (the mask has the input's shape); a ``None`` entry means "the input's size on that axis".
    """

    kind: Kind
    rate: float
    data_format: DataFormat = DataFormat.CHANNELS_LAST
    noise_shape: tuple[int | None, ...] | None = None
    batch_size: int | None = None
    name: str = "dropout"

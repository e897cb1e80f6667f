"""What our docs say of PyTorch's channel dropout, checked against the real torch.

The README contrasts the service with PyTorch: dropped cells are exactly +0.0 in the service
(as in Keras 3), NaN in PyTorch where the input is NaN or infinite. semantics.md says
``Dropout2d`` (and ``Dropout3d``) drop whole channels-first feature maps: the layout of our
``channels_first`` mask, so masks from either are comparable cell for cell.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from service.core import kernel
from service.core.config import DataFormat, DropoutConfig, Kind

CF = DataFormat.CHANNELS_FIRST
#: torch module, our kind with the same (channels-first) maps, input shape (N, C, spatial...).
CHANNEL_DROPOUTS: list[tuple[type[torch.nn.Module], Kind, tuple[int, ...]]] = [
    (torch.nn.Dropout2d, Kind.SPATIAL_2D, (8, 12, 3, 4)),
    (torch.nn.Dropout3d, Kind.SPATIAL_3D, (8, 12, 2, 3, 2)),
]


def run(module: torch.nn.Module, x: NDArray[Any], seed: int) -> NDArray[Any]:
    torch.manual_seed(seed)  # torch's dropout draws from the global generator
    out: NDArray[Any] = module.train()(torch.from_numpy(x.copy())).detach().numpy()
    return out


@pytest.mark.parametrize("rate", [0.5, 1.0])
@pytest.mark.parametrize(("module", "kind", "shape"), CHANNEL_DROPOUTS)
def test_torch_gives_nan_where_it_drops_nan_or_inf_and_we_give_plus_zero(
    module: type[torch.nn.Module], kind: Kind, shape: tuple[int, ...], rate: float
) -> None:
    x = np.ones(shape, np.float32)
    maps = x.reshape(*shape[:2], -1)  # (N, C, cells of one map), a view of x
    maps[:, :, 0] = np.where(np.arange(shape[1]) % 2 == 0, np.nan, np.inf)  # one cell per map
    y = run(module(p=rate), x, seed=0).reshape(maps.shape)
    torch_dropped = y[:, :, -1] == 0  # there x is 1
    assert torch_dropped.any()  # at 0.5, with 96 maps, some are dropped (seeded: fixed)
    # Every dropped map's NaN/inf cell came out NaN (0 * NaN, 0 * inf), not 0.
    assert np.isnan(y[:, :, 0][torch_dropped]).all()

    config = DropoutConfig(kind, rate, CF)
    ours = kernel.apply(config, x, training=True, seed=0)
    our_dropped = ~kernel.mask_matrix(config, ours.mask)
    assert our_dropped.any()
    our_maps = ours.output.reshape(maps.shape)
    assert not our_maps[:, :, 0][our_dropped].view(np.uint32).any()  # +0.0, not NaN


@pytest.mark.parametrize(("module", "kind", "shape"), CHANNEL_DROPOUTS)
def test_torch_drops_the_maps_of_our_channels_first_mask(
    module: type[torch.nn.Module], kind: Kind, shape: tuple[int, ...]
) -> None:
    x = np.random.default_rng(2).uniform(1, 2, shape).astype(np.float32)  # no zeros
    kept = run(module(p=0.5), x, seed=2024) != 0
    mask_shape = kernel.mask_shape(DropoutConfig(kind, 0.5, CF), shape)
    assert mask_shape == (*shape[:2], *(1,) * (len(shape) - 2))
    # One decision per (sample, channel), taken for the whole map ...
    per_cell = kept.reshape(*shape[:2], -1)
    per_map = per_cell[:, :, :1]
    assert np.array_equal(np.broadcast_to(per_map, per_cell.shape), per_cell)
    # ... and decisions that differ across samples and across channels (seeded: fixed).
    assert not np.all(per_map == per_map[:1]) and not np.all(per_map == per_map[:, :1])

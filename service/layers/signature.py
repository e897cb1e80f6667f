"""A layer's tensor signature: the shapes it takes and gives, with -1 for a free dimension."""

from __future__ import annotations

from dataclasses import dataclass

from service.core.config import Kind
from service.layers.spec import Layer

FREE = -1

#: A Keras dtype policy's compute dtype, as the dtype table names it.
_COMPUTE_DTYPES = {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


@dataclass(frozen=True, slots=True)
class Signature:
    input_shape: list[int]
    mask_shape: list[int]
    dtype: str


def signature(layer: Layer) -> Signature:
    """Spatial kinds have a fixed rank; plain dropout takes any rank unless noise_shape fixes it."""
    batch = layer.batch_size or FREE
    dtype = _COMPUTE_DTYPES.get(layer.dtype or "", layer.dtype or "float32")
    rank = layer.kind.rank
    if rank is not None:
        mask = [batch, FREE]  # samples x channels
        return Signature([batch] + [FREE] * (rank - 1), mask, dtype)
    assert layer.kind is Kind.DROPOUT
    if layer.noise_shape is None:
        return Signature([FREE], [FREE], dtype)
    shape = [batch] + [FREE] * (len(layer.noise_shape) - 1)
    mask = [FREE if d is None else d for d in layer.noise_shape]
    if layer.noise_shape[0] is None:
        mask[0] = batch
    return Signature(shape, mask, dtype)

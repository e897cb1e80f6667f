"""Compose a layer with an ONNX model: the layer inserted after tensors of the model.

``compose`` is pure (bytes and a layer in, bytes out; no HTTP, no store): the route, the CLI
and the tests call it alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from service.compose import record, surgery, validate
from service.core import rng
from service.errors import MixedMaskForms
from service.layers.resolve import ResolvedSpec, dropout_config
from service.layers.spec import Layer
from service.onnx.export import spec_dict
from service.onnx.graph import GraphSpec
from service.params import DEFAULT_MASK, MaskForm

_U64: Final = 1 << 64


def compose(
    model_bytes: bytes,
    layer: Layer | ResolvedSpec,
    *,
    after: Sequence[str] = (),
    seed: int,
    max_nodes: int,
    mask: MaskForm = DEFAULT_MASK,
) -> bytes:
    """``model_bytes`` with ``layer`` inserted after each tensor of ``after`` (none: after the
    model's only output); insertion i draws the stream of ``seed + i`` (mod 2**64), its mask
    in the form ``mask``, which every layer of a model shares.
    ``max_nodes`` bounds the model's nodes (SPATIAL_DROPOUT_MAX_MODEL_NODES).

    The result keeps the model's inputs and outputs (names and order), opset, IR version,
    functions, domains and value_info, gains (or reuses) the graph input ``training_mode``,
    and records the insertions under ``record.RECORD_KEY`` in its metadata_props.
    """
    model = validate.load_model(model_bytes, max_nodes=max_nodes)
    opset = validate.model_opset(model)
    layers = record.read_record(model)
    forms = {inserted.mask for inserted in layers} - {mask}
    if forms:
        raise MixedMaskForms(forms.pop(), mask)
    config = dropout_config(layer)
    points = surgery.insertion_points(model.graph, after)
    types = surgery.tensor_types(model, points)
    dtypes = [surgery.check_fits(config, point, types[point]) for point in points]
    surgery.ensure_training_mode(model, mask)
    names = surgery.used_names(model)
    spec = spec_dict(layer)
    for i, (point, dtype) in enumerate(zip(points, dtypes, strict=True)):
        used = (seed + i) % _U64
        dims = types[point].dims
        rank = len(dims) if dims is not None else (surgery.expected_rank(config) or 0)
        graph_spec = GraphSpec(config, rank, dtype, opset, rng.mix_seed(used), mask)
        prefix = surgery.fresh_prefix(names, len(layers))
        inserted = surgery.insert_layer(model.graph, point, graph_spec, prefix)
        layers.append(
            record.InsertedLayer(
                index=len(layers),
                tensor=point,
                insertion=i,
                seed=used,
                stream_seed=rng.mix_seed(used),
                layer=spec,
                prefix=inserted.prefix,
                mask=mask,
                dropout=inserted.dropout,
                mask_node=inserted.mask_node,
                platform=record.PORTABLE if mask == "portable" else record.Platform(),
            )
        )
    record.write_record(model, layers)
    composed: bytes = model.SerializeToString()
    validate.check(composed)
    return composed

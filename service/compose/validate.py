"""Take an uploaded ONNX model apart safely: every check a hostile model needs, in order.

1. ``wire.count_nodes``: the node count, from the bytes, before any parsing (TooManyNodes);
2. the protobuf parse, which builds nothing but the model (InvalidModel);
3. external data anywhere (initializers, sparse initializers, attribute tensors, subgraphs,
   functions, training graphs) is refused (ExternalData) *before* the checker, which would
   otherwise look for the named files: nothing is ever read because a model names it;
4. ``onnx.checker.check_model(full_check=True)`` on the bytes themselves (InvalidModel);
5. the default-domain opset, which the checker does not bound (ModelOpsetUnsupported).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, GraphProto, TensorProto

from service.compose.wire import count_nodes
from service.errors import ExternalData, InvalidModel, ModelOpsetUnsupported
from service.onnx.opsets import supported_opsets

#: The domain names of the default operator set.
DEFAULT_DOMAINS: Final = frozenset({"", "ai.onnx"})
#: Longest checker message passed on to the client.
_MAX_REASON: Final = 400


def load_model(data: bytes, *, max_nodes: int) -> onnx.ModelProto:
    """The model in ``data`` once every check above has passed."""
    count_nodes(data, max_nodes)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:
        raise InvalidModel(f"The body is not an ONNX model: {_short(exc)}.") from None
    refuse_external_data(model)
    check(data)
    model_opset(model)
    return model


def check(data: bytes) -> None:
    """``check_model(full_check=True)`` (shape inference included) on serialized bytes."""
    try:
        onnx.checker.check_model(data, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise InvalidModel(f"The model fails onnx.checker: {_short(exc)}") from None


def model_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset, refused outside ``supported_opsets()``."""
    offered = supported_opsets()
    versions = [
        int(entry.version) for entry in model.opset_import if entry.domain in DEFAULT_DOMAINS
    ]
    opset = versions[0] if len(versions) == 1 else None
    if opset not in offered:
        raise ModelOpsetUnsupported(opset, offered.start, offered.stop - 1)
    assert opset is not None
    return opset


def refuse_external_data(model: onnx.ModelProto) -> None:
    """ExternalData if any tensor of the model keeps its data outside the model."""
    for where, tensor in _tensors(model):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            raise ExternalData(f"{where} {tensor.name!r}")


def graphs(model: onnx.ModelProto) -> Iterator[GraphProto]:
    """Every graph of the model: the main graph, training graphs, and every subgraph (those
    of function bodies too)."""
    pending = [model.graph]
    for info in model.training_info:
        pending += [info.initialization, info.algorithm]
    for function in model.functions:
        for node in function.node:
            pending += subgraphs(node)
    while pending:
        graph = pending.pop()
        yield graph
        for node in graph.node:
            pending += subgraphs(node)


def nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """Every node of the model: in its graphs and in its functions' bodies."""
    for graph in graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def subgraphs(node: onnx.NodeProto) -> list[GraphProto]:
    """The graphs in a node's attributes (If branches, Loop and Scan bodies...)."""
    found: list[GraphProto] = []
    for attribute in node.attribute:
        if attribute.type == AttributeProto.GRAPH:
            found.append(attribute.g)
        elif attribute.type == AttributeProto.GRAPHS:
            found += attribute.graphs
    return found


def _tensors(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    """(where, tensor) for every tensor the model holds."""
    for graph in graphs(model):
        for tensor in graph.initializer:
            yield "initializer", tensor
        for sparse in graph.sparse_initializer:
            yield "sparse initializer", sparse.values
            yield "sparse initializer", sparse.indices
    attributes = [a for node in nodes(model) for a in node.attribute]
    attributes += [a for function in model.functions for a in function.attribute_proto]
    for attribute in attributes:
        if attribute.HasField("t"):
            yield f"attribute {attribute.name!r}", attribute.t
        for tensor in attribute.tensors:
            yield f"attribute {attribute.name!r}", tensor
        sparse_tensors = [*attribute.sparse_tensors]
        if attribute.HasField("sparse_tensor"):
            sparse_tensors.append(attribute.sparse_tensor)
        for sparse in sparse_tensors:
            yield f"attribute {attribute.name!r}", sparse.values
            yield f"attribute {attribute.name!r}", sparse.indices


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"

"""Insert a layer after a tensor of a model's main graph: the export's graph, renamed in.

For each insertion point T the layer's nodes are the ones ``service.onnx.graph`` builds for a
layer model (``Shape``, the mask shape, and the ``If`` on ``training_mode`` whose training
branch draws the mask of ``mix_seed(seed + i)``: a Dropout with that seed, or the portable
stream), with every name they define given a
prefix unique in the whole model (``spatial_dropout_<k>/``), their ``X`` read from the model,
their ``Y`` written back, and ``training_mode`` the one shared graph input. How T is joined:

- T is a node's output: that output is renamed ``<prefix>input``, the layer reads it and
  writes T itself, right after the node. Every reader of T (nodes of the main graph, nodes of
  subgraphs that see T from the outer scope, the graph outputs) then reads the layer's output
  with nothing to rewire, and T's value_info stays true (dropout keeps type and shape).
- T is a graph input or an initializer, whose name must stay: the layer reads T and writes
  ``<prefix>output``, and every reader of T is pointed at that, subgraphs included (except
  one that defines a T of its own). Such a T cannot also be a graph output (the output's
  name would have to be the input's).

Nodes are added right after the producer (or first), so the graph stays topologically sorted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, TensorProto, helper, numpy_helper

from service.compose.validate import graphs, nodes, subgraphs
from service.core import kernel
from service.core.config import DropoutConfig
from service.errors import (
    AmbiguousInsertionPoint,
    InvalidInsertionPoint,
    InvalidTrainingMode,
    TensorRankMismatch,
    UnknownTensor,
    UnsupportedOnnxDtype,
)
from service.onnx.graph import (
    MASK_OUTPUT,
    ONNX_DTYPES,
    REFUSED_DTYPES,
    TRAINING_MODE,
    GraphSpec,
    build_model,
)
from service.params import MaskForm

PREFIX: Final = "spatial_dropout_"

_DTYPE_NAMES: Final = {elem: name for name, elem in ONNX_DTYPES.items()}


@dataclass(frozen=True, slots=True)
class TensorType:
    """What the model says of a tensor: its element type and dims (None: rank unknown)."""

    elem: int
    dims: tuple[int | str | None, ...] | None


@dataclass(frozen=True, slots=True)
class Inserted:
    """What one insertion added: its name prefix, its Dropout node (None: the portable form,
    or no draws) and the node whose output is its keep mask (None: no draws)."""

    prefix: str
    dropout: str | None
    mask_node: str | None


# -- where ---------------------------------------------------------------------------------


def insertion_points(graph: GraphProto, after: Sequence[str]) -> list[str]:
    """The tensors to insert after: ``after``, or the graph's only output; each checked."""
    if not after:
        outputs = [output.name for output in graph.output]
        if len(outputs) != 1:
            raise AmbiguousInsertionPoint(outputs)
        after = outputs
    values = _main_values(graph)
    fixed = {value.name for value in graph.input} | {t.name for t in graph.initializer}
    output_names = {output.name for output in graph.output}
    seen: set[str] = set()
    for tensor in after:
        if tensor not in values:
            raise UnknownTensor(tensor)
        if tensor in seen:
            raise InvalidInsertionPoint(
                f"after names {tensor!r} twice; to stack two layers there, compose twice."
            )
        if tensor in fixed and tensor in output_names:
            raise InvalidInsertionPoint(
                f"{tensor!r} is both a graph input (or initializer) and a graph output: a "
                "layer between them would have to rename one, and names are kept."
            )
        seen.add(tensor)
    return list(after)


def _main_values(graph: GraphProto) -> set[str]:
    values = {value.name for value in graph.input}
    values |= {tensor.name for tensor in graph.initializer}
    values |= {name for node in graph.node for name in node.output}
    values.discard("")
    return values


def tensor_types(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, TensorType]:
    """The type of each named main-graph tensor, as shape inference finds it."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    known: dict[str, TensorType] = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.HasField("tensor_type"):
            tensor = value.type.tensor_type
            dims = None
            if tensor.HasField("shape"):
                dims = tuple(_dim(d) for d in tensor.shape.dim)
            known.setdefault(value.name, TensorType(tensor.elem_type, dims))
    for init in graph.initializer:
        known.setdefault(init.name, TensorType(init.data_type, tuple(init.dims)))
    return {name: known.get(name, TensorType(TensorProto.UNDEFINED, None)) for name in names}


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int | str | None:
    if dim.HasField("dim_value"):
        return dim.dim_value
    return dim.dim_param or None


def check_fits(config: DropoutConfig, tensor: str, found: TensorType) -> str:
    """The tensor's dtype name, after checking the layer takes a tensor of that type."""
    if found.elem not in _DTYPE_NAMES:
        name = _elem_name(found.elem)
        if found.elem == TensorProto.UNDEFINED:
            raise InvalidInsertionPoint(
                f"The type of {tensor!r} is unknown (shape inference finds none): give the "
                "model value_info for it."
            )
        raise UnsupportedOnnxDtype(name, REFUSED_DTYPES.get(name, f"{tensor!r} is {name}"))
    expected = expected_rank(config)
    if found.dims is not None and expected is not None and len(found.dims) != expected:
        shown = ["?" if d is None else d for d in found.dims]
        raise TensorRankMismatch(config.name, tensor, expected, shown)
    if found.dims is not None and all(isinstance(d, int) for d in found.dims):
        kernel.mask_shape(config, tuple(int(d) for d in found.dims if d is not None))
    return _DTYPE_NAMES[found.elem]


def expected_rank(config: DropoutConfig) -> int | None:
    """The rank the layer takes; None for any (element-wise dropout)."""
    if config.kind.rank is not None:
        return config.kind.rank
    return None if config.noise_shape is None else len(config.noise_shape)


def _elem_name(elem: int) -> str:
    try:
        return str(TensorProto.DataType.Name(elem)).lower()
    except ValueError:
        return f"element type {elem}"


# -- the shared training_mode input ----------------------------------------------------------


def ensure_training_mode(model: onnx.ModelProto, mask: MaskForm) -> None:
    """Give the main graph its bool scalar ``training_mode`` input, or check the one it has;
    refuse a model that uses the name for anything else. In the Dropout form it defaults to
    false; in the portable form it is a plain input (every runtime can feed it)."""
    graph = model.graph
    inputs = [value for value in graph.input if value.name == TRAINING_MODE]
    defaults = [tensor for tensor in graph.initializer if tensor.name == TRAINING_MODE]
    if any(TRAINING_MODE in node.output for node in graph.node):
        raise InvalidTrainingMode("is the output of a node")
    if any(TRAINING_MODE in _defined(sub) for node in nodes(model) for sub in subgraphs(node)):
        raise InvalidTrainingMode("is defined inside a subgraph")
    if not inputs:
        if defaults:
            raise InvalidTrainingMode("is an initializer that is not a graph input")
        graph.input.append(helper.make_tensor_value_info(TRAINING_MODE, TensorProto.BOOL, []))
        if mask == "dropout":
            graph.initializer.append(numpy_helper.from_array(np.array(False), TRAINING_MODE))
        return
    tensor = inputs[0].type.tensor_type
    if (
        not inputs[0].type.HasField("tensor_type")
        or tensor.elem_type != TensorProto.BOOL
        or not tensor.HasField("shape")
        or len(tensor.shape.dim) != 0
    ):
        raise InvalidTrainingMode(
            f"is a graph input of another type ({helper.printable_type(inputs[0].type)})"
        )
    if mask == "portable":
        if defaults:
            raise InvalidTrainingMode(
                "has a default (an initializer), which runtimes such as OpenVINO and "
                "onnxruntime-web treat as a constant; a portable layer needs a plain input"
            )
        return
    if not defaults:
        graph.initializer.append(numpy_helper.from_array(np.array(False), TRAINING_MODE))
        return
    value = numpy_helper.to_array(defaults[0])
    if value.dtype != np.bool_ or value.shape != () or bool(value):
        raise InvalidTrainingMode(f"defaults to {value.tolist()!r}, not false")


def _defined(graph: GraphProto) -> set[str]:
    """Names a graph defines itself: its inputs, initializers and node outputs."""
    names = {value.name for value in graph.input}
    names |= {tensor.name for tensor in graph.initializer}
    names |= {name for node in graph.node for name in node.output}
    return names


# -- names -----------------------------------------------------------------------------------


def used_names(model: onnx.ModelProto) -> set[str]:
    """Every name in the model: values, nodes and graphs, in every graph and function."""
    names: set[str] = set()
    for graph in graphs(model):
        names.add(graph.name)
        for values in (graph.input, graph.output, graph.value_info):
            names |= {value.name for value in values}
        names |= {tensor.name for tensor in graph.initializer}
        names |= {sparse.values.name for sparse in graph.sparse_initializer}
    for node in nodes(model):
        names |= {node.name, *node.input, *node.output}
    for function in model.functions:
        names |= {function.name, *function.input, *function.output}
        names |= {value.name for value in function.value_info}
    return names


def fresh_prefix(names: set[str], index: int) -> str:
    """``spatial_dropout_<index>/``, or with a suffix, so that no name in ``names`` starts so."""
    prefix, attempt = f"{PREFIX}{index}/", 0
    while any(name.startswith(prefix) for name in names):
        attempt += 1
        prefix = f"{PREFIX}{index}_{attempt}/"
    return prefix


# -- the insertion ---------------------------------------------------------------------------


def insert_layer(graph: GraphProto, tensor: str, spec: GraphSpec, prefix: str) -> Inserted:
    """Insert the layer of ``spec`` after ``tensor`` (see the module doc)."""
    producer = next((i for i, node in enumerate(graph.node) if tensor in node.output), None)
    if producer is not None:
        source, result, position = prefix + "input", tensor, producer + 1
        outputs = graph.node[producer].output
        outputs[list(outputs).index(tensor)] = source
    else:
        source, result, position = tensor, prefix + "output", 0
        _rewire(graph, tensor, result)
    layer = build_model(spec).graph

    def rename(name: str) -> str:
        if name in ("", TRAINING_MODE):
            return name
        return {"X": source, "Y": result}.get(name, prefix + name)

    counter = iter(range(1 << 30))
    added = list(layer.node)
    for node in added:
        _rename_node(node, rename, lambda op: f"{prefix}{op}_{next(counter)}")
    _insert_nodes(graph, position, added)
    graph.initializer.extend(
        _renamed_tensor(init, rename) for init in layer.initializer if init.name != TRAINING_MODE
    )
    every = list(_within(added))
    dropout = next((n.name for n in every if n.op_type == "Dropout"), None)
    # The node that writes the training branch's keep mask, unless it is a constant (rate 0
    # or 1: nothing drawn).
    drawing = next(
        (
            n.name
            for n in every
            if prefix + MASK_OUTPUT in n.output and n.op_type != "ConstantOfShape"
        ),
        None,
    )
    return Inserted(prefix, dropout, drawing)


def _within(added: Iterable[onnx.NodeProto]) -> Iterator[onnx.NodeProto]:
    """The nodes and, depth first, the nodes of their subgraphs."""
    for node in added:
        yield node
        for sub in subgraphs(node):
            yield from _within(sub.node)


def _insert_nodes(graph: GraphProto, position: int, added: list[onnx.NodeProto]) -> None:
    """Put ``added`` at ``position`` (protobuf's repeated fields have no insert)."""
    tail = [_copy(node) for node in graph.node[position:]]
    del graph.node[position:]
    graph.node.extend(added)
    graph.node.extend(tail)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _rename_node(
    node: onnx.NodeProto, rename: Callable[[str], str], node_name: Callable[[str], str]
) -> None:
    node.input[:] = [rename(name) for name in node.input]
    node.output[:] = [rename(name) for name in node.output]
    node.name = node_name(node.op_type)
    for attribute in node.attribute:
        if attribute.type == AttributeProto.TENSOR:
            attribute.t.name = rename(attribute.t.name)
        if attribute.type == AttributeProto.GRAPH:
            sub = attribute.g
            sub.name = rename(sub.name)
            for values in (sub.input, sub.output, sub.value_info):
                for value in values:
                    value.name = rename(value.name)
            for init in sub.initializer:
                init.name = rename(init.name)
            for inner in sub.node:
                _rename_node(inner, rename, node_name)


def _renamed_tensor(tensor: TensorProto, rename: Callable[[str], str]) -> TensorProto:
    copy = TensorProto()
    copy.CopyFrom(tensor)
    copy.name = rename(tensor.name)
    return copy


def _rewire(graph: GraphProto, old: str, new: str) -> None:
    """Point every reader of ``old`` in ``graph``'s nodes (and in the subgraphs that see it
    from the outer scope) at ``new``."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        for sub in subgraphs(node):
            if old in _defined(sub):
                continue  # shadowed: the subgraph's own tensor of that name
            _rewire(sub, old, new)
            for output in sub.output:
                if output.name == old:
                    output.name = new

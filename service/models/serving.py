"""Run a stored ONNX model, composed or not, with reproducible Monte Carlo spatial dropout.

The composed file's layers carry their stream seed, fixed when the model was composed: as a
Dropout's attribute, or in the tables of a portable layer's stream. To serve any seed, the
server runs a *serving variant*: the node that draws each inserted layer's keep mask (its
Dropout, or the end of its portable stream, whose then-dead nodes are dropped) is replaced by
an ``Identity`` of a new graph input, the keep mask, which the kernel draws
(``kernel.keep_mask_for``: the numbering both forms follow). So a training call with seed s
feeds insertion i the mask of ``seed + i``, exactly what the file composed with s draws, and
Monte Carlo sample t feeds ``seed + t*K + i``. Both forms are served alike.
The T samples run as one batch (the input repeated T times, the masks stacked) when every
input has a free batch axis.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper

from service import errors
from service.compose import record, surgery, validate
from service.core import kernel
from service.core.config import DataFormat, DropoutConfig, Kind
from service.inference import TensorMetadata
from service.onnx.graph import MASK_OUTPUT, TRAINING_MODE

_U64: Final = 1 << 64
#: Suffix of the graph input that carries an inserted layer's keep mask.
MASK_INPUT_SUFFIX: Final = "keep_mask"

#: ONNX element types as V2 datatypes, and as numpy dtypes.
ONNX_TO_V2: Final[dict[int, str]] = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.DOUBLE: "FP64",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT8: "INT8",
    TensorProto.INT16: "INT16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.UINT8: "UINT8",
    TensorProto.UINT16: "UINT16",
    TensorProto.UINT32: "UINT32",
    TensorProto.UINT64: "UINT64",
    TensorProto.BOOL: "BOOL",
}


@dataclass(frozen=True, slots=True)
class Insertion:
    """An inserted layer as the serving variant runs it."""

    index: int
    config: DropoutConfig
    mask_input: str | None  # None: the layer draws nothing (rate 0 or 1)
    #: The dims of the tensor it follows, from shape inference (None: unknown).
    dims: tuple[int | str | None, ...] | None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the store keeps beside a model's bytes, and GET /models/{name} answers."""

    sha256: str
    size: int
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]
    layers: tuple[record.InsertedLayer, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "bytes": self.size,
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
            "layers": [layer.model_dump(mode="json") for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInfo:
        def tensors(items: Sequence[Mapping[str, Any]]) -> tuple[TensorMetadata, ...]:
            return tuple(TensorMetadata(t["name"], t["datatype"], tuple(t["shape"])) for t in items)

        return cls(
            sha256=data["sha256"],
            size=data["bytes"],
            inputs=tensors(data["inputs"]),
            outputs=tensors(data["outputs"]),
            layers=tuple(record.InsertedLayer.model_validate(x) for x in data["layers"]),
        )


def _metadata(value: onnx.ValueInfoProto) -> TensorMetadata:
    tensor = value.type.tensor_type
    datatype = ONNX_TO_V2.get(tensor.elem_type, "BYTES")
    dims: tuple[int, ...] = ()
    if tensor.HasField("shape"):
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    return TensorMetadata(value.name, datatype, dims)


def served_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller gives: graph inputs without a default, and not the composed
    layers' ``training_mode`` (the server feeds it; the portable form gives it no default)."""
    defaults = {init.name for init in model.graph.initializer}
    if record.read_record(model):
        defaults.add(TRAINING_MODE)
    return [value for value in model.graph.input if value.name not in defaults]


def inspect(data: bytes, *, max_nodes: int) -> tuple[onnx.ModelProto, ModelInfo]:
    """Check an uploaded model as compose does (node count before parsing, external data,
    the checker, the opset, the record) and describe it."""
    model = validate.load_model(data, max_nodes=max_nodes)
    layers = record.read_record(model)
    info = ModelInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        inputs=tuple(_metadata(v) for v in served_inputs(model)),
        outputs=tuple(_metadata(v) for v in model.graph.output),
        layers=tuple(layers),
    )
    return model, info


def layer_config(spec: Mapping[str, Any]) -> DropoutConfig:
    """The kernel's config of a recorded layer spec."""
    noise = spec.get("noise_shape")
    return DropoutConfig(
        kind=Kind(spec["kind"]),
        rate=float(spec["rate"]),
        data_format=DataFormat(spec.get("data_format") or DataFormat.CHANNELS_LAST.value),
        noise_shape=None if noise is None else tuple(noise),
        batch_size=None,
        name=spec.get("name") or "spatial_dropout",
    )


def serving_variant(model: onnx.ModelProto) -> tuple[bytes, list[Insertion]]:
    """The model with each inserted layer's keep mask a graph input, and the insertions."""
    layers = record.read_record(model)
    tensors = surgery.tensor_types(model, [layer.tensor for layer in layers]) if layers else {}
    owners = {node.name: graph for graph in validate.graphs(model) for node in graph.node}
    insertions = []
    for layer in layers:
        mask_input = None
        drawing = layer.drawing_node
        if drawing is not None:
            graph = owners.get(drawing)
            mask_output = layer.prefix + MASK_OUTPUT
            node = next((n for n in graph.node if n.name == drawing), None) if graph else None
            if graph is None or node is None or mask_output not in node.output:
                raise errors.InvalidModel(
                    f"The record names the node {drawing!r}, which draws no keep mask in the model."
                )
            mask_input = f"{layer.prefix}{MASK_INPUT_SUFFIX}"
            del node.input[:]
            del node.output[:]
            del node.attribute[:]
            node.op_type, node.domain = "Identity", ""
            node.input.append(mask_input)
            node.output.append(mask_output)
            if graph is not model.graph:  # the user's own graph keeps every node it has
                _drop_dead_nodes(graph)
            # Any shape: the rank follows the tensor, which may be unknown here.
            model.graph.input.append(
                helper.make_tensor_value_info(mask_input, TensorProto.BOOL, None)
            )
        insertions.append(
            Insertion(
                layer.index, layer_config(layer.layer), mask_input, tensors[layer.tensor].dims
            )
        )
    return model.SerializeToString(), insertions


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove the nodes no output of ``graph`` depends on (a portable stream whose mask the
    server now feeds), and the initializers only they read."""
    while True:
        used = {output.name for output in graph.output}
        for node in graph.node:
            used.update(node.input)
            for sub in validate.subgraphs(node):
                used |= _read_in(sub)
        dead = [i for i, node in enumerate(graph.node) if not used.intersection(node.output)]
        if not dead:
            break
        for i in reversed(dead):
            del graph.node[i]
    kept = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _read_in(graph: onnx.GraphProto) -> set[str]:
    """Every name the nodes of ``graph`` and its subgraphs read."""
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for sub in validate.subgraphs(node):
            names |= _read_in(sub)
    return names


class Runner:
    """One model's onnxruntime session (of its serving variant), shared by every thread."""

    def __init__(self, data: bytes, *, max_nodes: int, intra_op_threads: int) -> None:
        model, self.info = inspect(data, max_nodes=max_nodes)
        self._inputs = {v.name: v for v in served_inputs(model)}
        self._free_batch = all(_free_first_dim(v) for v in self._inputs.values())
        variant, self.insertions = serving_variant(model)
        self.size = len(variant)
        self._session = _session(variant, intra_op_threads)
        self._dtypes = {
            i.name: _numpy_dtype(i.type)
            for i in self._session.get_inputs()
            if i.name in self._inputs
        }
        self._shape_cache: OrderedDict[tuple[Any, ...], list[tuple[int, ...]]] = OrderedDict()
        self._model = model
        self._lock = threading.Lock()

    @property
    def layer_count(self) -> int:
        return len(self.info.layers)

    def default_seed(self) -> int | None:
        """The seed the model was composed with (its first insertion's)."""
        return self.info.layers[0].seed if self.info.layers else None

    def check_inputs(self, inputs: Mapping[str, NDArray[Any]]) -> None:
        missing = [name for name in self._inputs if name not in inputs]
        unknown = [name for name in inputs if name not in self._inputs]
        if missing or unknown:
            raise errors.InvalidInferRequest(
                f"The model takes inputs {', '.join(self._inputs)}; "
                + (f"missing: {', '.join(missing)}. " if missing else "")
                + (f"unknown: {', '.join(unknown)}." if unknown else "")
            )
        for name, array in inputs.items():
            want = self._dtypes.get(name)
            if want is not None and array.dtype.newbyteorder("=") != want:
                raise errors.InvalidInferRequest(
                    f"Input {name!r} is {array.dtype}, but the model takes {want}."
                )

    def feeds(self, inputs: Mapping[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """The inputs checked against the model's and made contiguous in its dtypes."""
        self.check_inputs(inputs)
        return {
            name: np.ascontiguousarray(a, dtype=self._dtypes[name]) for name, a in inputs.items()
        }

    def check_size(
        self, feeds: Mapping[str, NDArray[Any]], samples: int, max_elements: int
    ) -> None:
        """AnswerTooLarge unless ``samples`` passes at once fit the element bound."""
        _check_answer(feeds, samples, self.info.outputs, max_elements)

    def run(
        self,
        inputs: Mapping[str, NDArray[Any]],
        *,
        training: bool,
        seed: int,
        sample_offset: int,
        samples: int | None,
        max_elements: int,
    ) -> dict[str, NDArray[Any]]:
        """The model's outputs; with ``samples`` T, each with a leading axis of T."""
        feeds = self.feeds(inputs)
        self.check_size(feeds, 1 if samples is None else samples, max_elements)
        if not training and samples is None:
            return self._run(feeds, None, training=False)
        if samples is None:
            batch = _batch(feeds)
            return self._run(feeds, self._masks(feeds, [seed], sample_offset, batch), training=True)
        return self.samples(feeds, seed=seed, sample_offset=sample_offset, first=0, count=samples)

    def samples(
        self,
        feeds: Mapping[str, NDArray[Any]],
        *,
        seed: int,
        sample_offset: int,
        first: int,
        count: int,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, NDArray[Any]]:
        """Monte Carlo samples ``first`` to ``first + count - 1`` of ``outputs`` (default:
        all), each with a leading axis of ``count``; sample t draws ``seed + t*K``."""
        batch = _batch(feeds)
        seeds = [(seed + t * self.layer_count) % _U64 for t in range(first, first + count)]
        if self._free_batch and batch is not None:
            stacked = {name: np.concatenate([a] * count, axis=0) for name, a in feeds.items()}
            masks = self._masks(feeds, seeds, sample_offset, batch)
            outs = self._run(stacked, masks, training=True, outputs=outputs)
            if all(o.ndim and o.shape[0] == count * batch for o in outs.values()):
                return {k: o.reshape(count, batch, *o.shape[1:]) for k, o in outs.items()}
        runs = [
            self._run(
                feeds,
                self._masks(feeds, [s], sample_offset, batch),
                training=True,
                outputs=outputs,
            )
            for s in seeds
        ]
        return {name: np.stack([r[name] for r in runs]) for name in runs[0]}

    def _masks(
        self,
        feeds: Mapping[str, NDArray[Any]],
        seeds: Sequence[int],
        sample_offset: int,
        batch: int | None,
    ) -> dict[str, NDArray[np.bool_]]:
        """Each insertion's mask: for every seed in turn, that call's mask, stacked on the
        batch axis (a single seed: the one call's mask)."""
        shapes = self._tensor_shapes(feeds, batch)
        masks = {}
        for insertion, shape in zip(self.insertions, shapes, strict=True):
            if insertion.mask_input is None:
                continue
            parts = [
                kernel.keep_mask_for(
                    insertion.config, shape, (s + insertion.index) % _U64, sample_offset
                )
                for s in seeds
            ]
            masks[insertion.mask_input] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return masks

    def _tensor_shapes(
        self, feeds: Mapping[str, NDArray[Any]], batch: int | None
    ) -> list[tuple[int, ...]]:
        """The shape of each insertion's tensor for these inputs: from the model's shape
        inference when only the batch is free, else inferred again for these input shapes."""
        known: list[tuple[int, ...]] = []
        for insertion in self.insertions:
            dims = insertion.dims
            if dims is None or not dims or batch is None:
                break
            rest = dims[1:]
            if not all(isinstance(d, int) and d > 0 for d in rest):
                break
            known.append((batch, *(int(d) for d in rest)))  # type: ignore[arg-type]
        else:
            return known
        key = tuple((name, a.shape) for name, a in sorted(feeds.items()))
        with self._lock:
            cached = self._shape_cache.get(key)
            if cached is None:
                cached = self._infer_shapes(feeds)
                self._shape_cache[key] = cached
                if len(self._shape_cache) > 64:
                    self._shape_cache.popitem(last=False)
        return cached

    def _infer_shapes(self, feeds: Mapping[str, NDArray[Any]]) -> list[tuple[int, ...]]:
        model = onnx.ModelProto()
        model.CopyFrom(self._model)
        for value in model.graph.input:
            if value.name in feeds:
                dims = value.type.tensor_type.shape.dim
                for dim, size in zip(dims, feeds[value.name].shape, strict=False):
                    dim.Clear()
                    dim.dim_value = size
        layers = record.read_record(model)
        types = surgery.tensor_types(model, [layer.tensor for layer in layers])
        shapes = []
        for layer in layers:
            dims = types[layer.tensor].dims
            if dims is None or not all(isinstance(d, int) for d in dims):
                raise errors.InvalidInferRequest(
                    f"The shape of tensor {layer.tensor!r}, where a layer is inserted, is not "
                    "known for these input shapes, so its mask cannot be drawn."
                )
            shapes.append(tuple(int(d) for d in dims))  # type: ignore[arg-type]
        return shapes

    def _run(
        self,
        feeds: Mapping[str, NDArray[Any]],
        masks: Mapping[str, NDArray[np.bool_]] | None,
        *,
        training: bool,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, NDArray[Any]]:
        full: dict[str, NDArray[Any]] = dict(feeds)
        for insertion in self.insertions:
            if insertion.mask_input is not None:
                # Inference mode: the If's other branch reads no mask; any will do.
                full[insertion.mask_input] = (
                    masks[insertion.mask_input] if masks is not None else np.ones((), np.bool_)
                )
        if self.insertions:
            full[TRAINING_MODE] = np.array(training)
        names = list(outputs) if outputs is not None else [o.name for o in self.info.outputs]
        try:
            values = self._session.run(names, full)
        except Exception as exc:  # onnxruntime raises its own types for bad shapes
            raise errors.InvalidInferRequest(
                f"onnxruntime refused the inputs: {str(exc)[:300]}"
            ) from None
        return dict(zip(names, values, strict=True))


def _free_first_dim(value: onnx.ValueInfoProto) -> bool:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape") or not tensor.shape.dim:
        return False
    return not tensor.shape.dim[0].HasField("dim_value")


def _batch(feeds: Mapping[str, NDArray[Any]]) -> int | None:
    """The inputs' common first dimension (None: a scalar input, or sizes that differ)."""
    firsts = {a.shape[0] if a.ndim else None for a in feeds.values()}
    if len(firsts) != 1:
        return None
    (first,) = firsts
    return first


def _check_answer(
    feeds: Mapping[str, NDArray[Any]],
    samples: int,
    outputs: Sequence[TensorMetadata],
    max_elements: int,
) -> None:
    """The T-fold inputs and every output of known size must fit the element bound."""
    largest = samples * max((a.size for a in feeds.values()), default=0)
    batch = _batch(feeds) or 1
    for out in outputs:
        rest = out.shape[1:]
        if out.shape and out.shape[0] == -1 and all(d >= 0 for d in rest):
            largest = max(largest, samples * batch * math.prod(rest))
    if largest > max_elements:
        raise errors.AnswerTooLarge(largest, max_elements)


def _numpy_dtype(ort_type: str) -> np.dtype[Any]:
    names = {
        "tensor(float)": np.float32,
        "tensor(float16)": np.float16,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(int8)": np.int8,
        "tensor(uint8)": np.uint8,
        "tensor(bool)": np.bool_,
    }
    return np.dtype(names.get(ort_type, np.float32))


def _session(data: bytes, intra_op_threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's load errors have no common public base
        raise errors.ModelLoadFailed(
            f"onnxruntime cannot load the model: {str(exc)[:400]}"
        ) from None


class RunnerCache:
    """Runners by the model's sha256, least recently used first out past ``max_bytes``."""

    def __init__(self, *, max_bytes: int, max_nodes: int, intra_op_threads: int) -> None:
        self.max_bytes = max_bytes
        self._max_nodes = max_nodes
        self._threads = intra_op_threads
        self._runners: OrderedDict[str, Runner] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}

    def cached(self, sha256: str) -> Runner | None:
        with self._lock:
            runner = self._runners.get(sha256)
            if runner is not None:
                self._runners.move_to_end(sha256)
            return runner

    def get(self, sha256: str, data: bytes) -> Runner:
        """The runner of ``data`` (whose digest is ``sha256``), built once however many
        threads ask at the same time."""
        runner = self.cached(sha256)
        if runner is not None:
            return runner
        with self._lock:
            building = self._building.setdefault(sha256, threading.Lock())
        with building:
            runner = self.cached(sha256)
            if runner is None:
                runner = Runner(data, max_nodes=self._max_nodes, intra_op_threads=self._threads)
                with self._lock:
                    self._runners[sha256] = runner
                    total = sum(r.size for r in self._runners.values())
                    while total > self.max_bytes and len(self._runners) > 1:
                        _, dropped = self._runners.popitem(last=False)
                        total -= dropped.size
            with self._lock:
                self._building.pop(sha256, None)
        return runner

    def clear(self) -> None:
        with self._lock:
            self._runners.clear()

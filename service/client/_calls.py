"""Every API call as a ``Call``: built here once, sent by the sync or the async client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import httpx
import numpy as np
import orjson
from numpy.typing import NDArray

from service.client._core import (
    HEADER_LENGTH,
    JSON,
    NPY,
    ONNX,
    Call,
    check,
    content_of,
    flag,
    from_npy,
    json_of,
    nothing,
    segment,
    to_npy,
    v2_answer,
    v2_body,
)

Engine = Literal["numpy", "onnxruntime"]
#: How an exported or composed layer draws its mask: the Dropout operator, or the stream
#: computed in the graph (exact on any ONNX runtime).
Mask = Literal["dropout", "portable"]


class Layer(TypedDict):
    """A stored layer (``POST /layers``, ``GET /layers/{ref}``)."""

    id: str
    name: str
    kind: str
    rate: float
    data_format: str | None
    batch_size: int | None
    trainable: bool
    weights: list[Any]
    seed: int | None
    dtype: str | None
    noise_shape: list[int | None] | None
    created_at: str


class LayerPage(TypedDict):
    """One page of ``GET /layers``: pass ``next_cursor`` back for the next (None: the last)."""

    items: list[Layer]
    next_cursor: str | None


class TensorInfo(TypedDict):
    """A model input or output: ``shape`` has -1 where any size goes."""

    name: str
    datatype: str
    shape: list[int]


class ModelInfo(TypedDict):
    """A stored model's description (``GET /models/{name}``)."""

    name: str
    sha256: str
    bytes: int
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    layers: list[dict[str, Any]]
    created_at: str | None
    read_only: bool


class ModelPage(TypedDict):
    """One page of ``GET /models``."""

    items: list[ModelInfo]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Applied:
    """The answer of ``apply``: the output, the seed used (replay with it) and, when asked,
    the keep mask (samples x channels, True = kept)."""

    output: NDArray[Any]
    seed: int
    layer: str | None
    mask: NDArray[np.bool_] | None = None


@dataclass(frozen=True, slots=True)
class Composed:
    """The answer of ``compose``: the composed model's bytes and the seed of insertion 0."""

    model: bytes
    seed: int


@dataclass(frozen=True, slots=True)
class Stored:
    """The answer of ``put_model``: the description, and whether the name was new."""

    model: ModelInfo
    created: bool


@dataclass(frozen=True, slots=True)
class Inferred:
    """The answer of ``infer``: the outputs by name and the parameters the server used."""

    outputs: dict[str, NDArray[Any]]
    parameters: dict[str, Any]

    @property
    def seed(self) -> int | None:
        """The seed used (None in inference mode, which draws none)."""
        seed = self.parameters.get("seed")
        return seed if isinstance(seed, int) else None

    @property
    def samples_used(self) -> int | None:
        """How many Monte Carlo samples the statistics are over (None: no statistics)."""
        used = self.parameters.get("mc_samples_used")
        return used if isinstance(used, int) else None


def _json_body(value: Any) -> tuple[bytes, dict[str, str]]:
    return orjson.dumps(value), {"content-type": JSON}


def create_layer(spec: Mapping[str, Any]) -> Call[Layer]:
    content, headers = _json_body(dict(spec))
    # Not repeatable: if the first attempt was stored, a second is a name_conflict.
    return Call("POST", "/layers", json_of, headers=headers, content=content, repeatable=False)


def get_layer(ref: str) -> Call[Layer]:
    return Call("GET", f"/layers/{segment(ref)}", json_of)


def list_layers(limit: int | None, cursor: str | None) -> Call[LayerPage]:
    return Call("GET", "/layers", json_of, params=_page(limit, cursor))


def delete_layer(ref: str) -> Call[None]:
    return Call("DELETE", f"/layers/{segment(ref)}", nothing)


def keras(ref: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/layers/{segment(ref)}/keras", json_of)


def export_onnx(
    ref: str,
    opset: int | None,
    seed: int | None,
    dtype: str | None,
    rank: int | None,
    mask: Mask | None = None,
) -> Call[bytes]:
    given = (("opset", opset), ("seed", seed), ("dtype", dtype), ("rank", rank), ("mask", mask))
    params = [(key, str(value)) for key, value in given if value is not None]
    return Call("GET", f"/layers/{segment(ref)}/onnx", content_of, params=params)


def apply(
    layer: str,
    x: NDArray[Any],
    *,
    training: bool,
    seed: int | None,
    sample_offset: int,
    engine: Engine,
    return_mask: bool,
) -> Call[Applied]:
    if return_mask:
        return _apply_json(layer, x, training, seed, sample_offset, engine)
    params = [
        ("layer", layer),
        ("training", flag(training)),
        ("sample_offset", str(sample_offset)),
        ("engine", engine),
    ]
    if seed is not None:
        params.append(("seed", str(seed)))

    def parse(response: httpx.Response) -> Applied:
        check(response)
        return Applied(
            from_npy(response.content),
            int(response.headers["x-seed"]),
            response.headers.get("x-layer", layer),
        )

    headers = {"content-type": NPY, "accept": NPY}
    return Call("POST", "/apply", parse, params=params, headers=headers, content=to_npy(x))


def _apply_json(
    layer: str, x: NDArray[Any], training: bool, seed: int | None, offset: int, engine: Engine
) -> Call[Applied]:
    """The JSON form, the one that answers the mask: the flat tensor form, exact both ways
    (each value is written as the shortest text that reads back to it)."""
    array = np.asarray(x)
    dtype = array.dtype.name  # float16, float32, float64, bfloat16
    wide = array.astype(np.float32) if dtype == "bfloat16" else array
    body: dict[str, Any] = {
        "layer": layer,
        "training": training,
        "sample_offset": offset,
        "engine": engine,
        "return_mask": True,
        "input": {"shape": list(array.shape), "dtype": dtype, "data": wide.reshape(-1).tolist()},
    }
    if seed is not None:
        body["seed"] = seed
    content, headers = _json_body(body)

    def parse(response: httpx.Response) -> Applied:
        answer = json_of(response)
        out = answer["output"]
        wire = np.float32 if out["dtype"] == "bfloat16" else array.dtype
        output = np.asarray(out["data"], dtype=wire).astype(array.dtype).reshape(out["shape"])
        return Applied(
            output, answer["seed"], answer["layer"], np.asarray(answer["mask"], dtype=np.bool_)
        )

    return Call("POST", "/apply", parse, headers=headers, content=content)


def compose(
    ref: str, model: bytes, after: Sequence[str], seed: int | None, mask: Mask | None = None
) -> Call[Composed]:
    params = [("after", tensor) for tensor in after]
    if seed is not None:
        params.append(("seed", str(seed)))
    if mask is not None:
        params.append(("mask", mask))

    def parse(response: httpx.Response) -> Composed:
        check(response)
        return Composed(response.content, int(response.headers["x-seed"]))

    headers = {"content-type": ONNX, "accept": ONNX}
    return Call(
        "POST", f"/layers/{segment(ref)}/compose", parse, params, headers, content=bytes(model)
    )


def put_model(name: str, model: bytes) -> Call[Stored]:
    def parse(response: httpx.Response) -> Stored:
        return Stored(json_of(response), response.status_code == 201)

    headers = {"content-type": ONNX}
    return Call("PUT", f"/models/{segment(name)}", parse, headers=headers, content=bytes(model))


def get_model(name: str) -> Call[ModelInfo]:
    return Call("GET", f"/models/{segment(name)}", json_of)


def list_models(limit: int | None, cursor: str | None) -> Call[ModelPage]:
    return Call("GET", "/models", json_of, params=_page(limit, cursor))


def delete_model(name: str) -> Call[None]:
    return Call("DELETE", f"/models/{segment(name)}", nothing)


def model_onnx(name: str) -> Call[bytes]:
    return Call("GET", f"/models/{segment(name)}/onnx", content_of)


def infer(
    name: str,
    inputs: Mapping[str, NDArray[Any]],
    *,
    training: bool | None,
    seed: int | None,
    sample_offset: int | None,
    mc_samples: int | None,
    mc_statistics: bool | str | Sequence[str],
    mc_class_axis: int | None = None,
    mc_softmax: bool | None = None,
    mc_quantiles: Sequence[float] | None = None,
    mc_tolerance: float | None = None,
    engine: Engine | None = None,
    outputs: Sequence[str] | None = None,
) -> Call[Inferred]:
    parameters: dict[str, Any] = {
        key: value
        for key, value in (
            ("training", training),
            ("seed", seed),
            ("sample_offset", sample_offset),
            ("mc_samples", mc_samples),
            ("mc_class_axis", mc_class_axis),
            ("mc_softmax", mc_softmax),
            ("mc_tolerance", mc_tolerance),
            ("engine", engine),
        )
        if value is not None
    }
    if mc_statistics:
        # V2 parameter values are scalars: a list of statistics travels comma-separated.
        parameters["mc_statistics"] = (
            mc_statistics if isinstance(mc_statistics, bool | str) else ",".join(mc_statistics)
        )
    if mc_quantiles is not None:
        parameters["mc_quantiles"] = ",".join(repr(float(level)) for level in mc_quantiles)
    content, size = v2_body(inputs, parameters, outputs)

    def parse(response: httpx.Response) -> Inferred:
        arrays, used = v2_answer(response)
        return Inferred(arrays, used)

    headers = {"content-type": ONNX, HEADER_LENGTH: str(size)}
    return Call(
        "POST", f"/v2/models/{segment(name)}/infer", parse, headers=headers, content=content
    )


def _page(limit: int | None, cursor: str | None) -> list[tuple[str, str]]:
    params = []
    if limit is not None:
        params.append(("limit", str(limit)))
    if cursor is not None:
        params.append(("cursor", cursor))
    return params

"""Every failure the service reports, each a type that carries its HTTP status and stable code.

Routes and the numeric core raise these; one handler (``service.api.problems``) turns them into
``application/problem+json`` responses. A test asserts each code, so codes never change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar


class ServiceError(Exception):
    """Base of every error a client may see; ``detail`` is the human sentence."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal server error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers the answer carries besides the problem body."""
        return {}


# -- request syntax ------------------------------------------------------------------------


class InvalidJson(ServiceError):
    status, code, title = 400, "invalid_json", "Malformed JSON"


class InvalidNpy(ServiceError):
    status, code, title = 400, "invalid_npy", "Malformed .npy payload"


class BodyTooLarge(ServiceError):
    status, code, title = 413, "body_too_large", "Request body too large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The request body exceeds the limit of {limit} bytes.")


class BodyTimeout(ServiceError):
    status, code, title = 408, "body_timeout", "Request body too slow"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"The request body stalled: no data arrived for {seconds:g} seconds; "
            "send the body without pauses."
        )


class HeadTooLarge(ServiceError):
    status, code, title = 431, "header_too_large", "Request head too large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The request line and headers exceed the limit of {limit} bytes.")


class HeadTimeout(ServiceError):
    status, code, title = 408, "head_timeout", "Request head too slow"

    def __init__(self, seconds: float) -> None:
        super().__init__(f"The request line and headers did not arrive within {seconds:g} seconds.")


class ServerBusy(ServiceError):
    status, code, title = 503, "server_busy", "Too many unfinished request bodies"

    def __init__(self, budget: int, retry_after: int) -> None:
        super().__init__(
            f"Unfinished request bodies already hold {budget} bytes in this server process; "
            "retry after the time in Retry-After."
        )
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class UnsupportedMediaType(ServiceError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"

    def __init__(self, got: str | None, supported: Sequence[str]) -> None:
        super().__init__(
            f"Content-Type {got or '(none)'!r} is not accepted here; "
            f"send one of: {', '.join(supported)}."
        )


class NotAcceptable(ServiceError):
    status, code, title = 406, "not_acceptable", "Not acceptable"

    def __init__(self, accept: str, offered: Sequence[str]) -> None:
        super().__init__(
            f"Accept {accept!r} admits none of the media types this request can answer with: "
            f"{', '.join(offered)}."
        )


class RequestValidation(ServiceError):
    status, code, title = 422, "validation_error", "Invalid request"


# -- tensors -------------------------------------------------------------------------------


class RaggedTensor(ServiceError):
    status, code, title = 422, "ragged_tensor", "Ragged tensor"


class ShapeMismatch(ServiceError):
    status, code, title = 422, "shape_mismatch", "Shape and data disagree"


class InvalidShape(ServiceError):
    status, code, title = 422, "invalid_shape", "Invalid shape"


class TensorTooLarge(ServiceError):
    status, code, title = 413, "tensor_too_large", "Tensor too large"


class UnsupportedDtype(ServiceError):
    status, code, title = 422, "unsupported_dtype", "Unsupported dtype"

    def __init__(self, dtype: object) -> None:
        super().__init__(
            f"Unsupported dtype {str(dtype)!r}: "
            "dropout takes float16, float32, float64 or bfloat16."
        )


class ValueOutOfRange(ServiceError):
    status, code, title = 422, "value_out_of_range", "Value out of range"


class RankMismatch(ServiceError):
    status, code, title = 422, "rank_mismatch", "Wrong input rank"

    def __init__(self, layer: str, expected: int, shape: Sequence[int]) -> None:
        # Keras's own wording (InputSpec), so the message is familiar to its users.
        dims = ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "")
        super().__init__(
            f'Input 0 of layer "{layer}" is incompatible with the layer: '
            f"expected ndim={expected}, found ndim={len(shape)}. Full shape received: ({dims})"
        )


class BatchSizeMismatch(ServiceError):
    status, code, title = 422, "batch_size_mismatch", "Batch size mismatch"

    def __init__(self, layer: str, batch_size: int, got: int) -> None:
        super().__init__(
            f'Layer "{layer}" was built with batch_size={batch_size}, '
            f"but the input's first dimension is {got}."
        )


class NoiseShapeMismatch(ServiceError):
    status, code, title = 422, "invalid_noise_shape", "Invalid noise_shape"


# -- layer specs ---------------------------------------------------------------------------


class InvalidRate(ServiceError):
    status, code, title = 422, "invalid_rate", "Invalid rate"

    def __init__(self, rate: object) -> None:
        # Keras 3's message, word for word.
        super().__init__(
            "Invalid value received for argument `rate`. Expected a float value "
            f"between 0 and 1. Received: rate={rate}"
        )


class InvalidDataFormat(ServiceError):
    status, code, title = 422, "invalid_data_format", "Invalid data_format"

    def __init__(self, value: object) -> None:
        super().__init__(
            "The `data_format` argument must be one of {'channels_first', 'channels_last'}. "
            f"Received: data_format={value}"
        )


class WeightsNotSupported(ServiceError):
    status, code, title = 422, "weights_not_supported", "Dropout layers have no weights"

    def __init__(self, count: int) -> None:
        super().__init__(
            f"Dropout layers have no weights, but {count} weight array(s) were given; "
            "pass weights as null, [] or leave it out."
        )


class InvalidName(ServiceError):
    status, code, title = 422, "invalid_name", "Invalid layer name"


class InvalidSpec(ServiceError):
    status, code, title = 422, "invalid_spec", "Invalid layer spec"


# -- the store -----------------------------------------------------------------------------


class LayerNotFound(ServiceError):
    status, code, title = 404, "layer_not_found", "Layer not found"

    def __init__(self, ref: str) -> None:
        super().__init__(f"No layer has the id or name {ref!r}.")
        self.ref = ref


class NameConflict(ServiceError):
    status, code, title = 409, "name_conflict", "Layer name taken"

    def __init__(self, name: str) -> None:
        super().__init__(f"A layer named {name!r} already exists; names are unique.")


class StoreUnavailable(ServiceError):
    status, code, title = 503, "store_unavailable", "Store unavailable"
    #: Seconds a client should wait before trying again: the store connects again on the
    #: first call after its database is back, so a short wait loses nothing.
    retry_after: ClassVar[int] = 1

    def __init__(self, detail: str, reason: str = "the layer store did not answer") -> None:
        super().__init__(detail)
        #: Why, as a clause fit to follow "Not ready:" (what /readyz says).
        self.reason = reason

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Draining(ServiceError):
    status, code, title = 503, "draining", "Shutting down"

    def __init__(self, seconds: float) -> None:
        super().__init__(
            f"Not ready: this replica was told to stop and serves for at most {seconds:g} s "
            "more; send new requests to another."
        )


class StoreFull(ServiceError):
    status, code, title = 507, "insufficient_storage", "Store is out of space"


class InvalidCursor(ServiceError):
    status, code, title = 422, "invalid_cursor", "Invalid page cursor"

    def __init__(self, cursor: str) -> None:
        super().__init__(f"Invalid cursor {cursor!r}: pass back the next_cursor of a page.")


# -- the Open Inference Protocol (/v2) -----------------------------------------------------


class InvalidInferenceHeader(ServiceError):
    status, code, title = 400, "invalid_inference_header", "Invalid Inference-Header-Content-Length"


class InvalidInferRequest(ServiceError):
    status, code, title = 400, "invalid_infer_request", "Invalid inference request"


class ModelVersionNotFound(ServiceError):
    status, code, title = 404, "model_version_not_found", "Model version not found"

    def __init__(self, model: str, version: str) -> None:
        super().__init__(f"Model {model!r} has no version {version!r}; its only version is '1'.")


class UnsupportedContentEncoding(ServiceError):
    status, code, title = 415, "unsupported_content_encoding", "Unsupported Content-Encoding"

    def __init__(self, encoding: str) -> None:
        super().__init__(
            f"Content-Encoding {encoding!r} is not supported; send identity, gzip or deflate."
        )


class InvalidCompressedBody(ServiceError):
    status, code, title = 400, "invalid_compressed_body", "Corrupt compressed body"


# -- ONNX export and the onnxruntime engine ------------------------------------------------


class UnsupportedOpset(ServiceError):
    status, code, title = 422, "unsupported_opset", "Unsupported ONNX opset"

    def __init__(self, opset: int, lowest: int, newest: int) -> None:
        super().__init__(
            f"opset {opset} is not offered: choose one from {lowest} to {newest} (the newest "
            "that both the installed onnx and onnxruntime support)."
        )


class UnsupportedOnnxDtype(ServiceError):
    status, code, title = 422, "unsupported_onnx_dtype", "dtype not available in ONNX"

    def __init__(self, dtype: str, reason: str) -> None:
        super().__init__(
            f"No ONNX model for {dtype}: {reason}. Models are exported for float16, float32 "
            "and float64; the numpy engine runs every dtype."
        )


class SeedRequired(ServiceError):
    status, code, title = 422, "seed_required", "A seed is required"

    def __init__(self, layer: str) -> None:
        super().__init__(
            f"Layer {layer!r} has no seed, and an exported model bakes its seed in: "
            "pass one (?seed= or --seed)."
        )


# -- authentication (SPATIAL_DROPOUT_API_TOKENS) -------------------------------------------


class Unauthorized(ServiceError):
    status, code, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str = "This request needs `Authorization: Bearer <token>`.") -> None:
        super().__init__(detail)


class Forbidden(ServiceError):
    status, code, title = 403, "forbidden", "Forbidden"

    def __init__(self) -> None:
        super().__init__("The bearer token is not one this server accepts.")


# -- composing a layer with an uploaded ONNX model -----------------------------------------


class InvalidModel(ServiceError):
    status, code, title = 422, "invalid_model", "Not a valid ONNX model"


class ExternalData(ServiceError):
    status, code, title = 422, "external_data", "Tensors stored outside the model"

    def __init__(self, where: str) -> None:
        super().__init__(
            f"The model keeps tensor data outside itself ({where}): models are taken whole, "
            "and no file a model names is ever read. Save it with every tensor inside "
            "(onnx.save_model(..., save_as_external_data=False))."
        )


class TooManyNodes(ServiceError):
    status, code, title = 413, "too_many_nodes", "Model has too many nodes"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The model has more than {limit} nodes (subgraphs and functions included), the "
            "limit SPATIAL_DROPOUT_MAX_MODEL_NODES sets."
        )


class ModelOpsetUnsupported(ServiceError):
    status, code, title = 422, "unsupported_opset", "Unsupported ONNX opset"

    def __init__(self, opset: int | None, lowest: int, newest: int) -> None:
        got = "no default-domain opset" if opset is None else f"opset {opset}"
        super().__init__(
            f"The model imports {got}; layers are composed with models of opset {lowest} to "
            f"{newest} (Dropout with a seed needs 13; the installed onnx and onnxruntime load "
            f"up to {newest})."
        )


class InvalidTrainingMode(ServiceError):
    status, code, title = 422, "invalid_training_mode", "training_mode is taken"

    def __init__(self, why: str) -> None:
        super().__init__(
            f"The model's name 'training_mode' {why}; composed layers share one graph input "
            "of that name, a bool scalar (default false), and reuse it only in that form."
        )


class MixedMaskForms(ServiceError):
    status, code, title = 422, "mixed_mask_forms", "The model's layers take another mask form"

    def __init__(self, recorded: str, asked: str) -> None:
        super().__init__(
            f"The model already holds layers in the {recorded!r} mask form; a model's layers "
            f"share one form (and one training_mode input), so this one cannot be {asked!r}. "
            f"Compose with mask={recorded}, or compose the original model again."
        )


class UnknownTensor(ServiceError):
    status, code, title = 422, "unknown_tensor", "Unknown tensor"

    def __init__(self, tensor: str) -> None:
        super().__init__(
            f"The model's main graph has no tensor named {tensor!r} (after= names a graph "
            "input, an initializer or a node output of the main graph)."
        )
        self.tensor = tensor


class AmbiguousInsertionPoint(ServiceError):
    status, code, title = 422, "ambiguous_insertion_point", "Where to insert the layer?"

    def __init__(self, outputs: Sequence[str]) -> None:
        names = ", ".join(repr(name) for name in outputs) or "none"
        super().__init__(
            f"The model has {len(outputs)} outputs ({names}): name the tensors to insert the "
            "layer after (after=...)."
        )


class InvalidInsertionPoint(ServiceError):
    status, code, title = 422, "invalid_insertion_point", "The layer cannot go there"


class TensorRankMismatch(RankMismatch):
    """A model's tensor of known rank that the layer's kind does not take (rank_mismatch)."""

    def __init__(self, layer: str, tensor: str, expected: int, dims: Sequence[int | str]) -> None:
        shape = ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "")
        ServiceError.__init__(
            self,
            f'Layer "{layer}" takes inputs of rank {expected}, but the model\'s tensor '
            f"{tensor!r} has rank {len(dims)}: shape ({shape}).",
        )


class ModelNotFound(ServiceError):
    status, code, title = 404, "model_not_found", "Model not found"

    def __init__(self, name: str) -> None:
        super().__init__(f"No model or layer is named {name!r}.")
        self.ref = name


class NotComposed(ServiceError):
    status, code, title = 422, "not_composed", "The model has no dropout layer inserted"

    def __init__(self, name: str, what: str) -> None:
        super().__init__(
            f"{what}, and model {name!r} has no spatial dropout layer inserted: its training "
            "passes would all be one answer. Compose a layer into it (POST /layers/{ref}/compose)."
        )


class TooManyMcSamples(ServiceError):
    status, code, title = 422, "too_many_mc_samples", "Too many Monte Carlo samples"

    def __init__(self, asked: int, limit: int) -> None:
        super().__init__(f"mc_samples is {asked}; the server allows 1 to {limit}.")


class AnswerTooLarge(ServiceError):
    status, code, title = 413, "answer_too_large", "The answer would be too large"

    def __init__(self, elements: int, limit: int) -> None:
        super().__init__(
            f"The answer would hold {elements} elements, more than the limit of {limit}: "
            "ask for fewer mc_samples or a smaller batch."
        )


class ModelLoadFailed(ServiceError):
    status, code, title = 422, "model_not_loadable", "onnxruntime cannot load the model"


class ReadOnlyModel(ServiceError):
    status, code, title = 409, "read_only_model", "The model comes from the model repository"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"Model {name!r} is served from the read-only model repository; change it there."
        )

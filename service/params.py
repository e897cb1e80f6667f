"""The request parameters every protocol takes, each defined once: its type, bounds and words.

A JSON ``/apply`` body, the ``.npy`` form's query string, V2 infer ``parameters``, the ONNX
export's query and the command line all validate with these types, and the OpenAPI document
states them from the same definitions. Every type is strict (a JSON seed is ``7``, never ``"7"``);
text (a query string, an argument) is read with pydantic's ``validate_strings``, which parses
``"7"`` as the integer 7 and checks the same bounds; a FastAPI query parameter, validated
from text by FastAPI, is declared ``Annotated[Seed, FROM_TEXT]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import BeforeValidator, Field, Strict, TypeAdapter, ValidationError

from service.core.dtypes import DTYPES

__all__ = [
    "DEFAULT_MASK",
    "DTYPE_NAMES",
    "ENGINES",
    "FROM_TEXT",
    "INTEGRAL",
    "MASK_FORMS",
    "SEED_LIMIT",
    "Engine",
    "Mask",
    "MaskForm",
    "McSamples",
    "Opset",
    "SampleOffset",
    "Seed",
    "TensorDtype",
    "Training",
    "cli_type",
]

#: Marks a parameter FastAPI reads from text (a query string): parsed, not strict.
FROM_TEXT: Final = Strict(False)

#: Seeds are any unsigned 64-bit integer (mixed into the stream seed, see service.core.rng).
SEED_LIMIT: Final = 2**64
#: sample_offset times a sample's mask size must stay far inside the 64-bit draw counter.
OFFSET_LIMIT: Final = 2**62


def _integral(value: object) -> object:
    """JSON has one number type, and JSON Schema counts 7.0 as the integer 7: so do we. Past
    2**53 a float no longer tells which integer was written, so it stays a float (refused)."""
    if type(value) is float and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


#: Last in an integer type's metadata (after its strict bounds): a JSON integer is 7 or 7.0,
#: never "7" nor true.
INTEGRAL: Final = BeforeValidator(_integral)

Seed = Annotated[
    int,
    Field(
        ge=0,
        lt=SEED_LIMIT,
        strict=True,
        description="Seed of the mask: replay a call with the seed its answer names.",
    ),
    INTEGRAL,
]
SampleOffset = Annotated[
    int,
    Field(
        ge=0,
        lt=OFFSET_LIMIT,
        strict=True,
        description="Index of the first sample in the whole batch (for split batches).",
    ),
    INTEGRAL,
]
McSamples = Annotated[
    int,
    Field(
        ge=1,
        strict=True,
        description="Monte Carlo samples T (at most the server's max_mc_samples).",
    ),
    INTEGRAL,
]
Training = Annotated[bool, Field(strict=True, description="Drop feature maps (else the identity).")]

#: A tensor dtype by its wire name; the literal is checked against service.core.dtypes below.
TensorDtype = Literal["float16", "float32", "float64", "bfloat16"]
DTYPE_NAMES: Final[tuple[str, ...]] = get_args(TensorDtype)
if set(DTYPE_NAMES) != set(DTYPES):  # pragma: no cover - a programming error, caught at import
    raise AssertionError("TensorDtype must name exactly the dtypes of service.core.dtypes")

#: How an ONNX graph draws its keep mask: the Dropout operator (exact on onnxruntime's CPU
#: build on Linux), or the stream computed in the graph from integers (exact on any runtime).
MaskForm = Literal["dropout", "portable"]
MASK_FORMS: Final[tuple[str, ...]] = get_args(MaskForm)
DEFAULT_MASK: Final[MaskForm] = "dropout"
Mask = Annotated[
    MaskForm,
    Field(
        description="dropout: the Dropout operator (exact with /apply on onnxruntime's CPU "
        "build on Linux); portable: the stream computed in the graph, no random operator, "
        "exact on any ONNX runtime, training_mode a plain input."
    ),
]

#: What runs a layer: the numpy kernel, or the layer's exported graph in onnxruntime.
Engine = Annotated[
    Literal["numpy", "onnxruntime"],
    Field(
        description="numpy (the kernel), or onnxruntime (the layer's exported ONNX graph; "
        "the same answer, no bfloat16)."
    ),
]
ENGINES: Final[tuple[str, ...]] = get_args(get_args(Engine)[0])


def _opset_bounds(schema: dict[str, Any]) -> None:
    """The schema states the opsets the installed onnx and onnxruntime both support; asked
    when the document is built, not at import (the answer comes from opening models)."""
    from service.onnx.opsets import supported_opsets

    offered = supported_opsets()
    schema.update(minimum=offered.start, maximum=offered.stop - 1)


#: An ONNX opset. Its range is checked by ``service.onnx.opsets.check_opset``, which refuses
#: with ``unsupported_opset`` (a code of its own), and stated in the schema.
Opset = Annotated[
    int,
    Field(strict=True, description="ONNX opset.", json_schema_extra=_opset_bounds),
    INTEGRAL,
]


def cli_type(kind: Any, what: str) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses an argument as ``kind`` (one of the types above)."""
    adapter: TypeAdapter[Any] = TypeAdapter(Annotated[kind, FROM_TEXT])

    def parse(text: str) -> Any:
        try:
            return adapter.validate_strings(text)
        except ValidationError as exc:
            raise argparse.ArgumentTypeError(
                f"{what}: {exc.errors()[0]['msg']}, got {text!r}"
            ) from None

    return parse

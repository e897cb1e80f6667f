"""The bounds every integer of a layer or a request must fit, defined once for HTTP and the CLI."""

from __future__ import annotations

from typing import Annotated, Final

from pydantic import Field

#: Highest tensor rank any codec, spec or export accepts; numpy's own ceiling is 64.
MAX_RANK: Final = 32

#: ONNX shapes and the Open Inference Protocol's shapes are int64: a stored size must fit one.
MAX_DIM: Final = 2**63 - 1

#: A layer's ``batch_size`` and its ``noise_shape`` entries: positive, and a valid int64 size.
#: (``lt`` rather than ``le``: OpenAPI writes bounds as floats, and 2**63 is one exactly.)
Dim = Annotated[int, Field(ge=1, lt=MAX_DIM + 1, strict=True)]

#: An input rank (``?rank=``, ``--rank``).
Rank = Annotated[int, Field(ge=0, le=MAX_RANK)]

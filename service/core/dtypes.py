"""The one table of tensor dtypes the service accepts; every other mapping derives from it."""

from __future__ import annotations

from typing import Final

import ml_dtypes
import numpy as np

#: Wire name -> numpy dtype (native byte order). bfloat16 comes from ml_dtypes, as in JAX and onnx.
DTYPES: Final[dict[str, np.dtype[np.generic]]] = {
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}

#: numpy dtype -> wire name, derived from DTYPES.
NAMES: Final[dict[np.dtype[np.generic], str]] = {dt: name for name, dt in DTYPES.items()}


def dtype_name(dtype: np.dtype[np.generic]) -> str | None:
    """The wire name of a supported dtype (any byte order), or None if it is not supported."""
    return NAMES.get(dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype)


#: Wire name -> the Open Inference Protocol's datatype name (FP32...), for every supported dtype.
V2_DATATYPES: Final[dict[str, str]] = {
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "bfloat16": "BF16",
}
#: The inverse, derived.
FROM_V2: Final[dict[str, str]] = {v2: name for name, v2 in V2_DATATYPES.items()}

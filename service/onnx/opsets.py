"""The ONNX opsets a model is built for: the one place their bounds live."""

from __future__ import annotations

from functools import cache
from typing import Final

import onnx

from service.errors import UnsupportedOpset

#: The oldest opset offered: Dropout-13 (ratio and training_mode as inputs, a seed attribute).
MIN_OPSET: Final = 13
#: The default: the newest opset that every onnx (>= 1.16) and onnxruntime (>= 1.18) this
#: project admits can build and load, so a default export loads wherever the service runs.
DEFAULT_OPSET: Final = 21


def check_opset(opset: int) -> None:
    """Refuse an opset outside ``supported_opsets()``."""
    offered = supported_opsets()
    if opset not in offered:
        raise UnsupportedOpset(opset, offered.start, offered.stop - 1)


@cache
def supported_opsets() -> range:
    """Opsets from MIN_OPSET to the newest both the installed onnx and onnxruntime support.

    onnxruntime has no API that says which opsets it loads, so ask it: the newest opset whose
    models (a float16 layer in each mask form, which have every operator and version we emit)
    it opens. Cached: the answer is a property of the installed packages.
    """
    import onnxruntime as ort

    from service.core.config import DropoutConfig, Kind
    from service.onnx.graph import GraphSpec, build_model
    from service.params import MASK_FORMS

    options = ort.SessionOptions()
    options.log_severity_level = 4  # the refusals below are expected: log nothing
    config = DropoutConfig(Kind.SPATIAL_2D, 0.3)
    for opset in range(onnx.defs.onnx_opset_version(), MIN_OPSET - 1, -1):
        try:
            for form in MASK_FORMS:
                probe = build_model(GraphSpec(config, 4, "float16", opset, 1, form))  # type: ignore[arg-type]
                ort.InferenceSession(
                    probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
                )
        except Exception:  # onnxruntime raises its own types (Fail, InvalidGraph...)
            continue
        return range(MIN_OPSET, opset + 1)
    raise RuntimeError("onnxruntime loads none of the opsets this exporter builds")

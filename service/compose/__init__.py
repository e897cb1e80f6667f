"""Compose a layer with an uploaded ONNX model (R keras's ``object`` as a model).

``validate`` takes a hostile model apart safely, ``surgery`` inserts the layer's nodes,
``record`` keeps what was inserted in the model's metadata, ``composer.compose`` ties them.
"""

from service.compose.composer import compose
from service.compose.record import RECORD_KEY, InsertedLayer, read_record

__all__ = ["RECORD_KEY", "InsertedLayer", "compose", "read_record"]

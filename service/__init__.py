"""Keras-style spatial dropout, served over HTTP with reproducible, ONNX-compatible masks."""

from __future__ import annotations

__version__ = "0.1.0"

"""A small helper that writes ONNX nodes with fresh names, so graph code reads as arithmetic."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import helper, numpy_helper


class GraphBuilder:
    """Nodes and initializers of one graph; every value it makes is named ``<stem>_<n>``."""

    def __init__(self, stem: str) -> None:
        self.stem = stem
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._scalars: dict[tuple[str, bytes], str] = {}
        self._ints: dict[tuple[int, ...], str] = {}

    def fresh(self) -> str:
        self._count += 1
        return f"{self.stem}_{self._count}"

    def const(self, value: NDArray[Any] | np.generic, name: str | None = None) -> str:
        """An initializer holding ``value`` (its dtype and shape as given)."""
        name = name or self.fresh()
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def scalar(self, value: float | np.generic, dtype: type[np.generic] | np.dtype[Any]) -> str:
        """A scalar initializer, one per (dtype, value) in the graph."""
        array = np.array(value, dtype=dtype)
        key = (array.dtype.str, array.tobytes())
        if key not in self._scalars:
            self._scalars[key] = self.const(array)
        return self._scalars[key]

    def ints(self, *values: int) -> str:
        """A 1-D int64 initializer of ``values`` (shapes, starts, axes), one per tuple."""
        if values not in self._ints:
            self._ints[values] = self.const(np.array(values, dtype=np.int64))
        return self._ints[values]

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs: Any) -> str:
        """One node of one output; its name."""
        name = output or self.fresh()
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], **attrs))
        return name

    # The arithmetic the stream and the division are written in.
    def add(self, a: str, b: str) -> str:
        return self.op("Add", a, b)

    def sub(self, a: str, b: str) -> str:
        return self.op("Sub", a, b)

    def mul(self, a: str, b: str) -> str:
        return self.op("Mul", a, b)

    def where(self, cond: str, a: str, b: str) -> str:
        return self.op("Where", cond, a, b)

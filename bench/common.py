"""What the scenarios share: the run's context, the layer and tensors, the answer checks."""

from __future__ import annotations

import argparse
import io
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from bench.procs import LAYER, Processes
from harness.process import Child
from service.core.config import DataFormat, DropoutConfig, Kind

MIB = 2**20
SEED = 1
RATE = 0.5  # the layer the servers hold (bench.procs.create_layer) has the same rate
NPY = "application/x-npy"
JSON = "application/json"
#: channels_last float32 shapes; float16 and bfloat16 double the batch so the bytes match, and
#: channels_first is the same tensor transposed to (N, C, H, W).
F32_SHAPES = {4 * MIB: (16, 32, 32, 64), 128 * MIB: (32, 128, 128, 64)}
SMALL_SHAPE = (1, 16, 16, 8)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Context:
    args: argparse.Namespace
    procs: Processes
    _service: Child | None = None

    @property
    def repeat(self) -> int:
        n: int = self.args.repeat
        return n

    def service(self) -> Child:
        """The one-worker service most sections share, started on first use."""
        if self._service is None:
            log("starting spatial-dropout serve (1 worker)")
            self._service = self.procs.service()
        return self._service


def layer_config(data_format: DataFormat) -> DropoutConfig:
    return DropoutConfig(kind=Kind.SPATIAL_2D, rate=RATE, data_format=data_format, name=LAYER)


def tensor(shape: tuple[int, ...], dtype: type[np.floating[Any]] = np.float32) -> NDArray[Any]:
    """Normal values (no zeros, subnormals or NaN), a 1 MiB random block tiled: drawing
    128 MiB of them afresh would take longer than the figures they feed."""
    block = np.random.default_rng(5).standard_normal(2**18, dtype=np.float32)
    return np.resize(block.astype(dtype), shape)


def npy_bytes(x: NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x)
    return buffer.getvalue()


def size_label(nbytes: int) -> str:
    return f"{nbytes / MIB:g} MiB"


def check(ok: bool, what: str) -> None:
    if not ok:
        raise RuntimeError(f"wrong answer from {what}: the benchmark would measure a bug")


def check_npy(answer: Any, expected: NDArray[Any], what: str) -> None:
    check(answer.status == 200, f"{what} (status {answer.status}: {bytes(answer.body[:300])!r})")
    got = np.load(io.BytesIO(answer.body), allow_pickle=False)
    check(np.array_equal(got, expected), what)


def check_v2(answer: Any, expected: NDArray[Any], what: str) -> None:
    check(answer.status == 200, f"{what} (status {answer.status}: {bytes(answer.body[:300])!r})")
    size = int(answer.headers["inference-header-content-length"])
    header = orjson.loads(answer.body[:size])
    output = header["outputs"][0]
    got = np.frombuffer(answer.body[size:], dtype="<f4").reshape(output["shape"])
    check(np.array_equal(got, expected), what)

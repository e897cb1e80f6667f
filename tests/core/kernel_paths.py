"""Run the dropout kernel through one of its paths, to compare them bit for bit.

``numpy``: the pure-numpy kernel (service/core/kernel.py), the reference. ``portable``: the
compiled extension's plain C loops (float16 through the quotient table). ``simd``: its AVX2 +
F16C loops. Each compiled path must be built here (``make setup`` builds it): a missing
extension fails its tests rather than quietly testing numpy twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from service.core import fastkernel

PATHS = ["numpy", "portable", "simd"]


@contextmanager
def kernel_path(path: str) -> Iterator[None]:
    saved = fastkernel._native, fastkernel.simd
    try:
        if path == "numpy":
            fastkernel._native = None
        else:
            assert fastkernel.available(), "the compiled kernel is not built (make setup)"
            if path == "simd" and not fastkernel._native.has_simd():
                pytest.skip("this CPU has no AVX2 + F16C")
            fastkernel.simd = path == "simd"
        yield
    finally:
        fastkernel._native, fastkernel.simd = saved

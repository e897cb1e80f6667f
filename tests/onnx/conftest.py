"""Fixtures of the ONNX tests: the five runtimes, onnxruntime-web's Node process shared."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.onnx import runtimes

RUNTIMES = [*runtimes.PYTHON_RUNTIMES, "onnxruntime-web"]


@pytest.fixture(scope="session")
def web() -> Iterator[runtimes.WebRunner]:
    yield from runtimes.web_runner()


def loader(request: pytest.FixtureRequest, runtime: str) -> runtimes.Loader:
    """The runtime named: ``loader(...)(model_bytes)`` is a session, called with feeds."""
    if runtime == "onnxruntime-web":
        web: runtimes.WebRunner = request.getfixturevalue("web")
        return web
    return runtimes.PYTHON_RUNTIMES[runtime]


@pytest.fixture(params=RUNTIMES)
def load(request: pytest.FixtureRequest) -> runtimes.Loader:
    """Each of the five runtimes in turn."""
    return loader(request, request.param)

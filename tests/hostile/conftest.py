"""Fixtures of the hostile suite: a layer to aim at, and the check that the server still serves."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.api.helpers import create


@pytest.fixture
def layer(client: httpx.Client) -> str:
    """A fresh spatial_dropout_2d layer (rate 0.5, seed 7) on the session's server; its name."""
    name: str = create(client, rate=0.5, seed=7)["name"]
    return name


def assert_serves(client: httpx.Client, layer: str) -> None:
    """The server still answers a liveness probe and a normal /apply, correctly."""
    assert client.get("/healthz").json() == {"status": "ok"}
    x = np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3)
    response = client.post(
        "/apply",
        json={"layer": layer, "training": True, "seed": 7, "input": x.tolist()},
    )
    assert response.status_code == 200, response.text
    # Seed 7 keeps channels 0 and 2 (the README's tour): values doubled, channel 1 zero.
    expected = x * np.array([2, 0, 2], dtype=np.float32)
    np.testing.assert_array_equal(np.array(response.json()["output"], np.float32), expected)

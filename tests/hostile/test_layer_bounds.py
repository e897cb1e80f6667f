"""Every integer a layer stores fits where it is used: int64 in ONNX and V2 shapes, the rank cap
for noise_shape; the CLI refuses what HTTP refuses; unparseable JSON has one code everywhere."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import onnx
import orjson
import pytest

from service.core.bounds import MAX_DIM, MAX_RANK
from service.core.config import Kind
from service.errors import InvalidSpec
from service.layers.resolve import ResolvedSpec
from service.onnx.export import export_layer
from tests.api.helpers import assert_problem, unique

ROOT = Path(__file__).resolve().parents[2]
INT64 = np.iinfo(np.int64)
DEEP = 100_000


def _create(client: httpx.Client, **spec: object) -> httpx.Response:
    return client.post("/layers", json={"name": unique(), "rate": 0.5, "seed": 3, **spec})


@pytest.mark.parametrize(
    "spec",
    [
        {"batch_size": MAX_DIM + 1},
        {"batch_size": 2**64},
        {"kind": "dropout", "noise_shape": [None] * (MAX_RANK + 1)},
        {"kind": "dropout", "noise_shape": [None] * 1_000_000},
        {"kind": "dropout", "noise_shape": [None, MAX_DIM + 1]},
    ],
    ids=["batch-2**63", "batch-2**64", "noise-rank-33", "noise-10**6-nulls", "noise-2**63"],
)
def test_integers_past_their_bounds_are_refused(
    client: httpx.Client, spec: dict[str, object]
) -> None:
    assert_problem(_create(client, **spec), 422, "validation_error")
    inline = {"spec": {"rate": 0.5, **spec}, "training": True, "seed": 1, "input": [[1.0]]}
    assert_problem(client.post("/apply", json=inline), 422, "validation_error")


def test_the_largest_batch_size_is_a_valid_v2_shape(client: httpx.Client) -> None:
    created = _create(client, batch_size=MAX_DIM)
    assert created.status_code == 201, created.text
    metadata = client.get(f"/v2/models/{created.json()['name']}")
    assert metadata.status_code == 200, metadata.text
    for tensor in metadata.json()["inputs"] + metadata.json()["outputs"]:
        assert all(INT64.min <= d <= INT64.max for d in tensor["shape"]), tensor


def test_the_largest_noise_shape_exports(client: httpx.Client) -> None:
    noise = [None] * (MAX_RANK - 1) + [MAX_DIM]
    created = _create(client, kind="dropout", noise_shape=noise)
    assert created.status_code == 201, created.text
    name = created.json()["name"]
    exported = client.get(f"/layers/{name}/onnx")
    assert exported.status_code == 200, exported.text
    model = onnx.load_from_string(exported.content)
    assert len(model.graph.input[0].type.tensor_type.shape.dim) == MAX_RANK
    metadata = client.get(f"/v2/models/{name}")
    assert metadata.status_code == 200, metadata.text


def test_a_stored_spec_past_the_bounds_does_not_overflow_the_export() -> None:
    """A row written before the bounds held is refused, not a 500 from numpy."""
    spec = ResolvedSpec(
        kind=Kind.DROPOUT,
        rate=0.5,
        data_format=None,
        batch_size=None,
        name="old",
        trainable=True,
        seed=1,
        dtype=None,
        noise_shape=(None, MAX_DIM + 1),
    )
    with pytest.raises(InvalidSpec, match="noise_shape"):
        export_layer(spec)
    wide = ResolvedSpec(**{**spec.as_dict(), "noise_shape": (None,) * (MAX_RANK + 1)})
    with pytest.raises(InvalidSpec, match="noise_shape"):
        export_layer(wide)


@pytest.mark.parametrize("rank", [-1, MAX_RANK + 1])
def test_rank_out_of_bounds_is_refused_by_http_and_the_cli(
    client: httpx.Client, tmp_path: Path, rank: int
) -> None:
    created = _create(client, kind="dropout")
    assert created.status_code == 201, created.text
    answer = client.get(f"/layers/{created.json()['name']}/onnx", params={"rank": rank})
    assert_problem(answer, 422, "validation_error")

    spec = tmp_path / "spec.json"
    spec.write_bytes(orjson.dumps({"kind": "dropout", "rate": 0.5, "seed": 1}))
    out = tmp_path / "model.onnx"
    cli = _cli("export", str(spec), "-o", str(out), "--rank", str(rank))
    assert cli.returncode == 1, cli.stdout
    assert "rank" in cli.stderr and "(validation_error)" in cli.stderr, cli.stderr
    assert "Traceback" not in cli.stderr
    assert not out.exists()


def test_the_cli_refuses_an_int64_overflow_without_a_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(
        '{"kind": "dropout", "rate": 0.5, "seed": 1, "noise_shape": [null, 9223372036854775808]}'
    )
    cli = _cli("export", str(spec), "-o", str(tmp_path / "model.onnx"))
    assert cli.returncode == 1
    assert "noise_shape" in cli.stderr and "Traceback" not in cli.stderr, cli.stderr


@pytest.mark.parametrize(
    "body",
    [
        b'{"rate": 0.5, "weights": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        b'{"rate": 0.5, "batch_size": ' + b"9" * 100_000 + b"}",
    ],
    ids=["weights-nested-10**5", "batch-size-10**5-digits"],
)
def test_unreadable_json_is_invalid_json_on_layers_as_on_apply(
    client: httpx.Client, body: bytes
) -> None:
    headers = {"content-type": "application/json"}
    assert_problem(client.post("/layers", content=body, headers=headers), 400, "invalid_json")
    as_apply = body[:-1] + b', "input": [1.0]}'
    assert_problem(client.post("/apply", content=as_apply, headers=headers), 400, "invalid_json")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

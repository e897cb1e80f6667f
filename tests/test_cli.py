"""The `spatial-dropout` command explains itself: its version, the defaults in force, the
dtypes it can export, and for each failure its real cause. The installed console script runs
in a subprocess, from a directory outside the checkout, as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service import __version__
from service.layers.resolve import resolve
from service.layers.spec import LayerCreate
from service.onnx.graph import ONNX_DTYPES
from service.store.sqlite import SqliteLayerStore

SCRIPT = Path(sys.executable).parent / "spatial-dropout"
PREFIX = "SPATIAL_DROPOUT_"


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    return subprocess.run(
        [str(SCRIPT), *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def flat(text: str) -> str:
    """Help text with argparse's line wrapping undone."""
    return re.sub(r"\s+", " ", text)


def test_version(tmp_path: Path) -> None:
    done = run("--version", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout == f"spatial-dropout {__version__}\n"


def test_serve_help_shows_the_defaults_in_force(tmp_path: Path) -> None:
    shown = flat(run("serve", "--help", cwd=tmp_path).stdout)
    assert "--host HOST interface to bind (default: 127.0.0.1, from SPATIAL_DROPOUT_HOST)" in shown
    assert "--port PORT port (default: 8000, from SPATIAL_DROPOUT_PORT)" in shown
    assert "(default: 1, from SPATIAL_DROPOUT_WORKERS)" in shown
    assert "0: off) (default: 8001, from SPATIAL_DROPOUT_GRPC_PORT)" in shown
    assert "sqlite:///./data/spatial_dropout.sqlite3" in shown
    # What the environment sets is what serve would use, so that is what help shows.
    database = "sqlite:///elsewhere/layers.sqlite3"
    shown = flat(
        run(
            "serve",
            "--help",
            cwd=tmp_path,
            SPATIAL_DROPOUT_PORT="9123",
            SPATIAL_DROPOUT_WORKERS="3",
            SPATIAL_DROPOUT_DATABASE_URL=database,
        ).stdout
    )
    assert "(default: 9123, from SPATIAL_DROPOUT_PORT)" in shown
    assert "(default: 3, from SPATIAL_DROPOUT_WORKERS)" in shown
    assert database in shown


def test_help_survives_a_bad_setting_and_serve_names_it(tmp_path: Path) -> None:
    done = run("serve", "--help", cwd=tmp_path, SPATIAL_DROPOUT_PORT="many")
    assert done.returncode == 0
    assert "(default: 8000, from SPATIAL_DROPOUT_PORT)" in flat(done.stdout)


def test_openapi_output_has_help(tmp_path: Path) -> None:
    shown = flat(run("openapi", "--help", cwd=tmp_path).stdout)
    assert re.search(r"--output OUTPUT, -o OUTPUT the file to write, or to compare with", shown)
    assert "(default: openapi.yaml)" in shown


def offered_dtypes(cwd: Path) -> list[str]:
    shown = flat(run("export", "--help", cwd=cwd).stdout)
    match = re.search(r"--dtype \{([a-z0-9,]+)\}", shown)
    assert match, shown
    return match.group(1).split(",")


def test_export_offers_exactly_the_dtypes_it_exports(tmp_path: Path) -> None:
    offered = offered_dtypes(tmp_path)
    assert "bfloat16" not in offered
    assert set(offered) == set(ONNX_DTYPES)
    spec = tmp_path / "sd.json"
    spec.write_text('{"rate": 0.5, "seed": 7}', encoding="utf-8")
    for dtype in offered:
        out = tmp_path / f"sd-{dtype}.onnx"
        done = run("export", "sd.json", "-o", str(out), "--dtype", dtype, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"wrote {out} (opset 21, {dtype}, seed 7, mask dropout)\n"
    refused = run("export", "sd.json", "-o", "x.onnx", "--dtype", "bfloat16", cwd=tmp_path)
    assert refused.returncode == 2
    assert "invalid choice: 'bfloat16'" in refused.stderr


def test_export_outside_the_checkout_names_the_missing_store(tmp_path: Path) -> None:
    done = run("export", "sd", "-o", "sd.onnx", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    store = tmp_path / "data" / "spatial_dropout.sqlite3"
    assert done.stderr.startswith(f"spatial-dropout export: no layer store at {store} ")
    assert "SPATIAL_DROPOUT_DATABASE_URL is sqlite:///./data/spatial_dropout.sqlite3" in done.stderr
    assert done.stderr.endswith("(store_not_found)\n")
    assert not (tmp_path / "data").exists()  # looking did not create it
    assert not (tmp_path / "sd.onnx").exists()


@pytest.mark.parametrize("with_store", [False, True])
def test_a_mistyped_spec_file_is_no_such_file(tmp_path: Path, with_store: bool) -> None:
    (tmp_path / "sd.json").write_text('{"rate": 0.5, "seed": 7}', encoding="utf-8")
    env = {}
    if with_store:
        database = tmp_path / "layers.sqlite3"
        SqliteLayerStore(database).close()
        env["SPATIAL_DROPOUT_DATABASE_URL"] = f"sqlite:///{database}"
    for ref in ("sdd.json", "specs/sd.json"):
        done = run("export", ref, "-o", "sd.onnx", cwd=tmp_path, **env)
        assert done.returncode == 1
        assert done.stderr == (
            f"spatial-dropout export: no such file: {ref} "
            "(nor a stored layer of that name) (file_not_found)\n"
        )


def test_a_stored_layer_is_found_by_any_name_and_a_missing_one_is_not_found(
    tmp_path: Path,
) -> None:
    database = tmp_path / "layers.sqlite3"
    store = SqliteLayerStore(database)
    store.create(resolve(LayerCreate(name="sd.json", rate=0.5, seed=7), "channels_last"))
    store.close()
    env = {"SPATIAL_DROPOUT_DATABASE_URL": f"sqlite:///{database}"}
    done = run("export", "sd.json", "-o", "out.onnx", cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr  # no such file, but a layer of that name
    missing = run("export", "sd", "-o", "out.onnx", cwd=tmp_path, **env)
    assert missing.returncode == 1
    assert missing.stderr == (
        "spatial-dropout export: No layer has the id or name 'sd'. (layer_not_found)\n"
    )


@pytest.mark.parametrize("command", ["export", "compose"])
@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_a_seed_outside_64_bits_is_a_usage_error(tmp_path: Path, command: str, seed: str) -> None:
    (tmp_path / "sd.json").write_text('{"rate": 0.5}', encoding="utf-8")
    (tmp_path / "model.onnx").write_bytes(b"")
    model = ["model.onnx"] if command == "compose" else []
    done = run(command, *model, "sd.json", "-o", "out.onnx", "--seed", seed, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "argument --seed:" in done.stderr
    assert not (tmp_path / "out.onnx").exists()

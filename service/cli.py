"""The ``spatial-dropout`` command: serve, export (a layer's ONNX model), openapi."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from service.errors import ServiceError
from service.onnx.export import DEFAULT_DTYPE, DEFAULT_OPSET, MIN_OPSET
from service.params import DTYPE_NAMES, Opset, Seed, cli_type
from service.settings import Settings

if TYPE_CHECKING:
    from service.layers.resolve import ResolvedSpec
    from service.layers.spec import Layer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="spatial-dropout", description="Keras-style spatial dropout as an HTTP service."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the HTTP API (SQLite under ./data/)")
    serve.add_argument("--host", help="interface to bind (default: SPATIAL_DROPOUT_HOST)")
    serve.add_argument("--port", type=int, help="port (default: SPATIAL_DROPOUT_PORT)")
    serve.add_argument("--workers", type=int, help="processes (default: SPATIAL_DROPOUT_WORKERS)")

    export = commands.add_parser(
        "export", help="write a layer's ONNX model (offline: reads the store, needs no server)"
    )
    export.add_argument(
        "layer",
        help="a stored layer's id or name (in SPATIAL_DROPOUT_DATABASE_URL), "
        "or the path of a JSON spec or Keras config",
    )
    export.add_argument("--output", "-o", type=Path, required=True, help="the .onnx file to write")
    export.add_argument(
        "--opset",
        type=cli_type(Opset, "an opset"),
        default=DEFAULT_OPSET,
        help=f"{MIN_OPSET} or newer ({DEFAULT_OPSET})",
    )
    export.add_argument(
        "--seed", type=cli_type(Seed, "a seed"), help="user seed (default: the layer's)"
    )
    export.add_argument(
        "--dtype",
        default=DEFAULT_DTYPE,
        choices=DTYPE_NAMES,
        help=f"dtype of X and Y (default {DEFAULT_DTYPE}; bfloat16 is refused)",
    )
    export.add_argument("--rank", type=int, help="input rank (dropout without noise_shape only)")

    openapi = commands.add_parser("openapi", help="write openapi.yaml from the app")
    openapi.add_argument("--check", action="store_true", help="fail if openapi.yaml differs")
    openapi.add_argument("--output", "-o", type=Path, default=Path("openapi.yaml"))

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args.host, args.port, args.workers)
    if args.command == "export":
        return _export(args.layer, args.output, args.opset, args.seed, args.dtype, args.rank)
    return _openapi(args.output, args.check)


def _serve(host: str | None, port: int | None, workers: int | None) -> int:
    from service.serve import serve

    return serve(host, port, workers)


def _export(
    ref: str, output: Path, opset: int, seed: int | None, dtype: str, rank: int | None
) -> int:
    from service.onnx.export import export_layer, export_seed

    settings = Settings()
    try:
        layer = _spec_file(Path(ref), settings) if Path(ref).is_file() else _stored(ref, settings)
        model = export_layer(layer, seed=seed, opset=opset, dtype=dtype, rank=rank)
        output.write_bytes(model.SerializeToString())
    except ServiceError as exc:
        print(f"spatial-dropout export: {exc.detail} ({exc.code})", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"spatial-dropout export: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {output} (opset {opset}, {dtype}, seed {export_seed(layer, seed)})")
    return 0


def _spec_file(path: Path, settings: Settings) -> ResolvedSpec:
    """A spec or Keras config in a JSON file, checked and resolved as POST /layers does."""
    import orjson
    from pydantic import TypeAdapter, ValidationError

    from service.api.problems import validation_error
    from service.errors import InvalidJson
    from service.layers.resolve import resolve_body
    from service.layers.spec import LayerBody

    try:
        payload = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"{path} is not valid JSON: {exc}.") from None
    try:
        body = TypeAdapter(LayerBody).validate_python(payload)
    except ValidationError as exc:
        raise validation_error(exc) from None
    return resolve_body(body, settings.data_format)


def _stored(ref: str, settings: Settings) -> Layer:
    """The stored layer ``ref`` names; a SQLite store that does not exist is not created."""
    from service.errors import LayerNotFound
    from service.store import open_store
    from service.store.sqlite import sqlite_path

    path = sqlite_path(settings.database_url)
    if path is not None and not path.exists():
        raise LayerNotFound(ref)
    store = open_store(settings.database_url)
    try:
        return store.get(ref)
    finally:
        store.close()


def _openapi(path: Path, check: bool) -> int:
    from service.api.app import create_app
    from service.api.openapi import to_yaml

    text = to_yaml(create_app(Settings()).openapi())
    if not check:
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
        return 0
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if current == text:
        print(f"{path} is up to date")
        return 0
    sys.stdout.writelines(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=str(path),
            tofile="the app's document",
        )
    )
    print(f"\n{path} differs from the app: run `spatial-dropout openapi`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``spatial-dropout`` command: serve, export (a layer's ONNX model), compose, openapi."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from service import __version__
from service.errors import ServiceError
from service.onnx.export import DEFAULT_DTYPE
from service.onnx.graph import ONNX_DTYPES
from service.onnx.opsets import DEFAULT_OPSET, MIN_OPSET
from service.params import DEFAULT_MASK, MASK_FORMS, MaskForm, Opset, Seed, cli_type
from service.settings import Settings

if TYPE_CHECKING:
    from service.layers.resolve import ResolvedSpec
    from service.layers.spec import Layer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="spatial-dropout", description="Keras-style spatial dropout as an HTTP service."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    in_force = _settings_in_force()
    serve = commands.add_parser(
        "serve",
        help="serve the HTTP API",
        description=f"Serve the HTTP API; layers are stored in {in_force.database_url} "
        f"({_ENV}DATABASE_URL). Each default below is the one in force: the setting's, "
        "or the environment variable's when it is set.",
    )
    serve.add_argument("--host", help=_default(in_force, "host", "interface to bind"))
    serve.add_argument("--port", type=int, help=_default(in_force, "port", "port"))
    serve.add_argument(
        "--workers", type=int, help=_default(in_force, "workers", "worker processes")
    )
    serve.add_argument(
        "--grpc-port",
        type=int,
        help=_default(in_force, "grpc_port", "gRPC port (Open Inference Protocol; 0: off)"),
    )

    export = commands.add_parser(
        "export", help="write a layer's ONNX model (offline: reads the store, needs no server)"
    )
    _layer_arguments(export, seed="user seed (default: the layer's)")
    export.add_argument(
        "--opset",
        type=cli_type(Opset, "an opset"),
        default=DEFAULT_OPSET,
        help=f"{MIN_OPSET} or newer ({DEFAULT_OPSET})",
    )
    export.add_argument(
        "--dtype",
        default=DEFAULT_DTYPE,
        choices=list(ONNX_DTYPES),
        help=f"dtype of X and Y (default {DEFAULT_DTYPE}; onnxruntime runs no bfloat16 model)",
    )
    export.add_argument("--rank", type=int, help="input rank (dropout without noise_shape only)")

    compose = commands.add_parser(
        "compose",
        help="insert a layer into an ONNX model (offline: reads the store, needs no server)",
        description="Write MODEL with the layer inserted after each --after tensor (none: "
        "after its only output), as POST /layers/{ref}/compose does. Insertion i draws the "
        "stream of seed + i; the composed model gains the bool input training_mode (default "
        "false). Errors print their code and exit 1.",
    )
    compose.add_argument("model", type=Path, help="the ONNX model file (every tensor inside it)")
    _layer_arguments(compose, seed="user seed (default: the layer's, else one drawn)")
    compose.add_argument(
        "--after",
        action="append",
        default=[],
        metavar="TENSOR",
        help="a tensor of the model's main graph to insert the layer after; repeat for several",
    )

    openapi = commands.add_parser("openapi", help="write openapi.yaml from the app")
    openapi.add_argument("--check", action="store_true", help="fail if openapi.yaml differs")
    openapi.add_argument(
        "--output",
        "-o",
        type=Path,
        default=Path("openapi.yaml"),
        help="the file to write, or to compare with --check (default: %(default)s)",
    )

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args.host, args.port, args.workers, args.grpc_port)
    if args.command == "export":
        return _export(
            args.layer, args.output, args.opset, args.seed, args.dtype, args.rank, args.mask
        )
    if args.command == "compose":
        return _compose(args.model, args.layer, args.output, args.after, args.seed, args.mask)
    return _openapi(args.output, args.check)


_ENV = "SPATIAL_DROPOUT_"
_NO_FILE = "file_not_found"


def _layer_arguments(command: argparse.ArgumentParser, seed: str) -> None:
    """What export and compose both take: the layer, the .onnx file to write and a seed
    (``seed`` its help: where the seed comes from when none is given differs)."""
    command.add_argument(
        "layer",
        help="a stored layer's id or name (in SPATIAL_DROPOUT_DATABASE_URL), "
        "or the path of a JSON spec or Keras config",
    )
    command.add_argument("--output", "-o", type=Path, required=True, help="the .onnx file to write")
    command.add_argument("--seed", type=cli_type(Seed, "a seed"), help=seed)
    command.add_argument(
        "--mask",
        choices=MASK_FORMS,
        default=DEFAULT_MASK,
        help="dropout: the Dropout operator (exact with /apply on onnxruntime's CPU build on "
        "Linux); portable: the stream computed in the graph, exact on any ONNX runtime, "
        "training_mode a plain input (default: %(default)s)",
    )


def _settings_in_force() -> Settings:
    """The settings the environment gives; their defaults when it sets one badly (the
    command itself then names the bad variable)."""
    try:
        return Settings()
    except ValidationError:
        return Settings.model_construct()


def _default(settings: Settings, field: str, what: str) -> str:
    return f"{what} (default: {getattr(settings, field)}, from {_ENV}{field.upper()})"


class _CommandError(Exception):
    """A failure of the command line itself (not of the service): a message and a code."""

    def __init__(self, detail: str, code: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code


def _serve(host: str | None, port: int | None, workers: int | None, grpc_port: int | None) -> int:
    from service.serve import serve

    return serve(host, port, workers, grpc_port)


def _export(
    ref: str,
    output: Path,
    opset: int,
    seed: int | None,
    dtype: str,
    rank: int | None,
    mask: MaskForm,
) -> int:
    from service.onnx.export import export_layer, export_seed

    settings = Settings()
    try:
        layer = _spec_file(Path(ref), settings) if Path(ref).is_file() else _stored(ref, settings)
        model = export_layer(layer, seed=seed, opset=opset, dtype=dtype, rank=rank, mask=mask)
        output.write_bytes(model.SerializeToString())
    except (ServiceError, _CommandError) as exc:
        print(f"spatial-dropout export: {exc.detail} ({exc.code})", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"spatial-dropout export: {exc}", file=sys.stderr)
        return 1
    used = export_seed(layer, seed)
    print(f"wrote {output} (opset {opset}, {dtype}, seed {used}, mask {mask})")
    return 0


def _compose(
    model: Path, ref: str, output: Path, after: list[str], seed: int | None, mask: MaskForm
) -> int:
    from service.compose import compose
    from service.dataplane import choose_seed

    settings = Settings()
    try:
        layer = _spec_file(Path(ref), settings) if Path(ref).is_file() else _stored(ref, settings)
        used = choose_seed(seed, layer.seed)
        composed = compose(
            model.read_bytes(),
            layer,
            after=after,
            seed=used,
            max_nodes=settings.max_model_nodes,
            mask=mask,
        )
        output.write_bytes(composed)
    except ServiceError as exc:
        print(f"spatial-dropout compose: {exc.detail} ({exc.code})", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"spatial-dropout compose: {exc}", file=sys.stderr)
        return 1
    points = ", ".join(after) if after else "the model's output"
    print(f"wrote {output} (after {points}; seed {used}; mask {mask})")
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
    """The stored layer ``ref`` names; a SQLite store that does not exist is not created.

    A ``ref`` that reads as a file name (a name cannot hold ``/``; ``.json`` is what a spec
    file is called) and is neither a file nor a stored layer is reported as a missing file."""
    from service.errors import LayerNotFound
    from service.store import open_store
    from service.store.sqlite import sqlite_path

    missing_file = _CommandError(f"no such file: {ref} (nor a stored layer of that name)", _NO_FILE)
    if "/" in ref or "\\" in ref:
        raise missing_file
    path = sqlite_path(settings.database_url)
    if path is not None and not path.exists():
        if ref.endswith(".json"):
            raise missing_file
        where = f"{path.resolve()}"
        if not path.is_absolute():
            where += f" ({path} from the current directory, {Path.cwd()})"
        raise _CommandError(
            f"no layer store at {where}: {_ENV}DATABASE_URL is {settings.database_url}. "
            "Run export where the store is, set the variable to it, or pass a JSON spec file.",
            "store_not_found",
        )
    store = open_store(settings.database_url)
    try:
        return store.get(ref)
    except LayerNotFound:
        if ref.endswith(".json"):
            raise missing_file from None
        raise
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

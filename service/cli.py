"""The ``spatial-dropout`` command: serve, openapi (export arrives with the ONNX issue)."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path

from service.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="spatial-dropout", description="Keras-style spatial dropout as an HTTP service."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the HTTP API (SQLite under ./data/)")
    serve.add_argument("--host", help="interface to bind (default: SPATIAL_DROPOUT_HOST)")
    serve.add_argument("--port", type=int, help="port (default: SPATIAL_DROPOUT_PORT)")
    serve.add_argument("--workers", type=int, help="processes (default: SPATIAL_DROPOUT_WORKERS)")

    openapi = commands.add_parser("openapi", help="write openapi.yaml from the app")
    openapi.add_argument("--check", action="store_true", help="fail if openapi.yaml differs")
    openapi.add_argument("--output", "-o", type=Path, default=Path("openapi.yaml"))

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args.host, args.port, args.workers)
    return _openapi(args.output, args.check)


def _serve(host: str | None, port: int | None, workers: int | None) -> int:
    import uvicorn

    settings = Settings()
    workers = workers or settings.workers
    uvicorn.run(
        "service.api.app:create_app",
        factory=True,
        host=host or settings.host,
        port=settings.port if port is None else port,
        workers=workers,
        log_level=settings.log_level,
    )
    return 0


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

"""``spatial-dropout serve``: uvicorn with our logs, metrics across workers, and a clean stop."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Final

from service.settings import Settings

#: prometheus_client's own variable: where each worker process writes its samples.
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
GUARDED_PROTOCOL: Final = "service.api.heads:GuardedHttpToolsProtocol"


def serve(
    host: str | None, port: int | None, workers: int | None, grpc_port: int | None = None
) -> int:
    import uvicorn

    from service.api.logs import log_config

    # The app (in each worker process) reads what the command line says from the
    # environment: the workers inherit it, and gRPC binds beside HTTP on the same host.
    for name, value in (("HOST", host), ("WORKERS", workers), ("GRPC_PORT", grpc_port)):
        if value is not None:
            os.environ[f"SPATIAL_DROPOUT_{name}"] = str(value)
    settings = Settings()
    workers = settings.workers
    http_port = settings.port if port is None else port
    taken = _port_in_use(settings.host, http_port, settings.grpc_port)
    if taken is not None:
        print(f"spatial-dropout serve: {taken}", file=sys.stderr)
        return 1
    # uvicorn stops gracefully on SIGTERM (in-flight requests finish, then the app's lifespan
    # closes the store) and then raises SIGTERM again, which by default would end the process
    # with status 143. A stop that was asked for and went well is success: exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    with _metrics_dir(workers):
        uvicorn.run(
            "service.api.app:create_served_app",
            factory=True,
            host=settings.host,
            port=http_port,
            workers=workers,
            log_level=settings.log_level,
            log_config=log_config(settings.log_level, settings.log_format),
            access_log=False,  # the app writes one line per request itself, with its id
            # httptools, with the head's size and time bounded (see service.api.heads); an
            # import string, so that each worker process loads it with its own settings.
            http=GUARDED_PROTOCOL,
            timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        )
    return 0


#: What moves each port, for the one line a port in use gets.
_MOVED_BY: Final = {
    "HTTP": "--port or SPATIAL_DROPOUT_PORT",
    "gRPC": "--grpc-port or SPATIAL_DROPOUT_GRPC_PORT (0 switches gRPC off)",
}


def _port_in_use(host: str, http_port: int, grpc_port: int) -> str | None:
    """The line to print when a port the server would listen on is taken (or cannot be bound
    at all), before any worker starts: uvicorn and grpcio would otherwise fail later, grpcio
    with a long traceback from each worker."""
    for what, port in (("HTTP", http_port), ("gRPC", grpc_port)):
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As uvicorn binds: a port left in TIME_WAIT by an earlier run is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return (
                        f"port {port} on {host} ({what}) is in use; "
                        f"choose another with {_MOVED_BY[what]}."
                    )
                return f"cannot listen on {host}:{port} ({what}): {exc.strerror}."
    return None


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


@contextmanager
def _metrics_dir(workers: int) -> Iterator[None]:
    """Give several workers a shared, empty directory for their metrics, for this run only."""
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        # The operator's directory: samples of an earlier run must not be added to this one's.
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink(missing_ok=True)
        yield
        return
    if workers <= 1:
        yield  # one process keeps its metrics in memory
        return
    path = tempfile.mkdtemp(prefix="spatial-dropout-metrics-")
    os.environ[MULTIPROC_ENV] = path  # the workers, spawned next, inherit it
    try:
        yield
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)

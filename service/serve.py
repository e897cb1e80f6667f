"""``spatial-dropout serve``: uvicorn with our logs, metrics across workers, and a clean stop."""

from __future__ import annotations

import os
import shutil
import signal
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
    # uvicorn stops gracefully on SIGTERM (in-flight requests finish, then the app's lifespan
    # closes the store) and then raises SIGTERM again, which by default would end the process
    # with status 143. A stop that was asked for and went well is success: exit 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    with _metrics_dir(workers):
        uvicorn.run(
            "service.api.app:create_served_app",
            factory=True,
            host=settings.host,
            port=settings.port if port is None else port,
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

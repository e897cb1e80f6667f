"""Logs: one JSON object per line (or plain text), with the request id of the request served."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final, TextIO

import orjson

from service import telemetry

#: The logger of the one line each request leaves (uvicorn's own access log is turned off).
ACCESS_LOGGER: Final = "service.access"
#: uvicorn's level names; "trace" is uvicorn's own level, below debug.
LEVELS: Final[dict[str, int]] = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": 5,
}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", "request_id", ...fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = telemetry.current()
        if context is not None:
            entry["request_id"] = context.request_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


_second: tuple[int, str] = (-1, "")


def _utc_time(created: float) -> str:
    """ISO 8601 in UTC to the millisecond; the part up to the second is reused (it is costly)."""
    global _second
    whole = int(created)
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((created - whole) * 1000):03d}+00:00"


class TextFormatter(logging.Formatter):
    """A readable line for a terminal, with the request id when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = telemetry.current()
        return line if context is None else f"{line} [{context.request_id}]"


class LoopTurnHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes, on an event loop's thread, once per turn of the loop.

    Each request logs a line, and each write is a system call. Lines logged on the loop's
    thread are formatted at once (while the request's context is live) and written together
    when the loop has run the callbacks of this turn. So under load a turn that answered
    many requests writes once, and an idle server writes each line within the same turn.
    Lines from other threads, and from before the loop runs, are written at once, as a
    plain StreamHandler writes them. ``flush`` (called at exit) writes what is pending.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            super().emit(record)
            return
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        if not self._pending:
            loop.call_soon(self.flush)
        self._pending.append(line)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._pending:
                text, self._pending = "".join(self._pending), []
                self.stream.write(text)
            super().flush()


def lean_records() -> None:
    """Make each record without what no formatter here prints: where in the source it was
    logged from (a walk up the stack), and the thread, process and task it came from. Every
    request logs a line, so this is per-request cost; it is for a served process alone, where
    these formatters are the only ones."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    if hasattr(logging, "logAsyncioTasks"):  # Python 3.12+
        logging.logAsyncioTasks = False


def log_config(level: str, fmt: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn's ``log_config``: every worker applies it."""
    number = LEVELS.get(level.lower(), logging.INFO)
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "default": {
                "class": f"{LoopTurnHandler.__module__}.{LoopTurnHandler.__qualname__}",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": number, "propagate": False},
            "uvicorn.error": {"level": number},
            "uvicorn.access": {"handlers": [], "level": logging.WARNING, "propagate": False},
            "service": {"handlers": ["default"], "level": number, "propagate": False},
        },
    }

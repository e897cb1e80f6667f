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
        fields = getattr(record, "fields", None)
        exception = self.formatException(record.exc_info) if record.exc_info else None
        return json_line(
            record.created,
            record.levelname.lower(),
            record.name,
            record.getMessage(),
            fields if isinstance(fields, dict) else None,
            exception,
        )


def json_line(
    created: float,
    level: str,
    logger: str,
    message: str,
    fields: dict[str, Any] | None = None,
    exception: str | None = None,
) -> str:
    """The JSON line of one entry, in the request's context when one is live."""
    entry: dict[str, Any] = {
        "time": _utc_time(created),
        "level": level,
        "logger": logger,
        "message": message,
    }
    context = telemetry.current()
    if context is not None:
        entry["request_id"] = context.request_id
    if fields is not None:
        entry.update(fields)
    if exception is not None:
        entry["exception"] = exception
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
            asyncio.get_running_loop()
        except RuntimeError:
            super().emit(record)
            return
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.write_line(line)

    def write_line(self, line: str) -> bool:
        """Queue a line formatted already, as ``emit`` queues a record's; False (nothing
        queued) off any loop's thread.

        Behind a line of this turn no loop is looked up: in Python 3.11 each
        ``get_running_loop`` is a system call (getpid, to notice a fork), and under load a
        turn answers several requests.
        """
        if not self._pending:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False
            loop.call_soon(self.flush)
        self._pending.append(line + self.terminator)
        return True

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._pending:
                text, self._pending = "".join(self._pending), []
                self.stream.write(text)
            super().flush()


def info_line(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """Log ``message`` and its ``fields`` at INFO, straight to the JSON sink when there is
    one (``json_sink``), else as a record."""
    if not logger.isEnabledFor(logging.INFO):
        return
    sink = json_sink(logger, logging.INFO)
    if sink is not None:
        line = json_line(time.time(), "info", logger.name, message, fields)
        if sink.write_line(line):
            return
    logger.info("%s", message, extra={"fields": fields})


def json_sink(logger: logging.Logger, level: int) -> LoopTurnHandler | None:
    """The one handler a ``level`` record of ``logger`` would reach, when it is a
    LoopTurnHandler with the JSON formatter and no filter on the way; else None.

    Then a line from ``json_line`` written there is what logging would have written, without
    a LogRecord and the calls that route it: each request logs a line, so this is cost per
    request. Anything else configured (another handler, a filter, tests' capture) sees
    ordinary records.
    """
    if logger.filters:
        return None
    found: logging.Handler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if found is not None or level < handler.level:
                return None
            found = handler
        current = current.parent if current.propagate else None
    if (
        type(found) is LoopTurnHandler
        and type(found.formatter) is JsonFormatter
        and not found.filters
    ):
        return found
    return None


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

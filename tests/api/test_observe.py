"""Request ids and the one JSON log line per request: in-process, and from a real server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service import telemetry
from service.api.app import create_app
from service.api.logs import JsonFormatter, LoopTurnHandler, info_line, json_sink, log_config
from service.settings import Settings
from tests.conftest import Server
from tests.inprocess import InProcess

HEX_ID = re.compile(r"[0-9a-f]{32}")


class Lines(logging.Handler):
    """Formats each record as it is emitted (the request's context is live only then)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def logged() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("service")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[InProcess]:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/o.sqlite3"))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with InProcess(app) as client:
        yield client


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("abc-123", True),
        ("4bf92f3577b34da6a3ce929d0e0e4736", True),
        ("00-4bf92f35-00f067aa.1:b+/=", True),
        ("x" * 128, True),
        ("x" * 129, False),  # too long
        ("has space", False),
        ("-leading-dash", False),
        ("naïve", False),
        ("", False),
    ],
)
def test_a_sane_incoming_request_id_is_kept_else_replaced(
    app_client: InProcess, sent: str, kept: bool
) -> None:
    response = app_client.get("/healthz", headers={"X-Request-ID": sent.encode()})
    got = response.headers["x-request-id"]
    if kept:
        assert got == sent
    else:
        assert HEX_ID.fullmatch(got)


def test_each_request_gets_its_own_id(app_client: InProcess) -> None:
    ids = {app_client.get("/healthz").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5 and all(HEX_ID.fullmatch(i) for i in ids)


def test_one_access_line_per_request_with_route_and_id(
    app_client: InProcess, logged: Lines
) -> None:
    made = app_client.post("/layers", json={"name": "logged", "rate": 0.5})
    assert made.status_code == 201
    response = app_client.get("/layers/logged", headers={"X-Request-ID": "req-42"})
    assert response.status_code == 200
    access = [line for line in logged.lines if line["logger"] == "service.access"]
    assert len(access) == 2
    line = access[1]
    assert line["request_id"] == "req-42"
    assert (line["method"], line["path"], line["route"], line["status"]) == (
        "GET",
        "/layers/logged",
        "/layers/{ref}",
        200,
    )
    assert line["level"] == "info" and line["message"].startswith("GET /layers/logged 200 ")
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"])
    assert access[0]["request_id"] == made.headers["x-request-id"]


def test_a_500_carries_the_id_and_its_error_line_names_it(
    app_client: InProcess, logged: Lines
) -> None:
    response = app_client.get("/boom", headers={"X-Request-ID": "trace-500"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "trace-500"
    errors = [line for line in logged.lines if line["level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["request_id"] == "trace-500"
    assert "RuntimeError: a bug" in errors[0]["exception"]
    (access,) = [line for line in logged.lines if line["logger"] == "service.access"]
    assert (access["status"], access["route"]) == (500, "/boom")


def test_an_unknown_path_is_logged_as_unmatched(app_client: InProcess, logged: Lines) -> None:
    assert app_client.get("/no/such/thing").status_code == 404
    (access,) = [line for line in logged.lines if line["logger"] == "service.access"]
    assert (access["route"], access["status"]) == ("unmatched", 404)
    assert access["path"] == "/no/such/thing"


def test_log_config_levels_and_formats() -> None:
    config = log_config("WARNING", "json")
    assert config["loggers"]["service"]["level"] == logging.WARNING
    assert config["formatters"]["default"]["()"] == "service.api.logs.JsonFormatter"
    assert log_config("trace", "text")["formatters"]["default"]["()"].endswith("TextFormatter")


def test_a_real_server_writes_json_lines(tmp_path: Path) -> None:
    with Server(tmp_path / "logs.sqlite3", env={"SPATIAL_DROPOUT_LOG_LEVEL": "info"}) as server:
        response = httpx.get(f"{server.url}/layers", headers={"X-Request-ID": "from-outside"})
        assert response.headers["x-request-id"] == "from-outside"
        line = _wait_for_line(server.log, "from-outside")
    assert line["route"] == "/layers" and line["status"] == 200
    text = server.log.read_text()
    records = [json.loads(raw) for raw in text.splitlines() if raw.strip()]
    assert all({"time", "level", "message"} <= record.keys() for record in records)
    assert any(record["message"].startswith("Uvicorn running on") for record in records)
    assert not any("GET /layers HTTP/1.1" in raw for raw in text.splitlines())  # no uvicorn access


def _wait_for_line(log: Path, request_id: str) -> dict[str, Any]:
    """The access line is written just after the answer goes out: poll for it, boundedly."""
    for _ in range(200):
        for raw in log.read_text().splitlines():
            if request_id in raw:
                record: dict[str, Any] = json.loads(raw)
                return record
        time.sleep(0.05)
    raise AssertionError(f"no log line for {request_id}:\n{log.read_text()}")


class Writes(io.StringIO):
    """A stream that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_logged_in_one_turn_of_the_loop_are_written_together() -> None:
    stream = Writes()
    handler = LoopTurnHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("tests.turns")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("before the loop")  # no loop: written at once
        assert (stream.getvalue(), stream.writes) == ("before the loop\n", 1)

        async def turn() -> None:
            for n in range(3):
                logger.warning("line %d", n)
            assert stream.writes == 1  # pending until the loop has run this turn's callbacks
            await asyncio.sleep(0)
            assert stream.writes == 2
            logger.warning("pending at exit")

        asyncio.run(turn())
        handler.flush()  # what logging.shutdown does at exit
        lines = ["before the loop", "line 0", "line 1", "line 2", "pending at exit"]
        assert stream.getvalue().splitlines() == lines
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def served_logger() -> Iterator[tuple[logging.Logger, io.StringIO, LoopTurnHandler]]:
    """A logger configured as a served process's: one LoopTurnHandler with the JSON formatter."""
    stream = io.StringIO()
    handler = LoopTurnHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.served")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def without_capture(logger: logging.Logger, handler: logging.Handler) -> None:
    """Leave ``handler`` alone on ``logger``: pytest attaches its capture to loggers that do
    not propagate, as each test starts, and a served process has no such handler."""
    logger.handlers[:] = [handler]


def test_a_line_written_straight_to_the_sink_is_the_line_a_record_makes(
    served_logger: tuple[logging.Logger, io.StringIO, LoopTurnHandler],
) -> None:
    logger, stream, handler = served_logger
    without_capture(logger, handler)
    assert json_sink(logger, logging.INFO) is handler
    fields = {"method": "POST", "path": '/a "quoted"\n/path', "status": 200, "duration_ms": 0.25}

    async def both() -> None:
        context = telemetry.RequestContext("the-request")
        token = telemetry.begin(context)
        try:
            info_line(logger, "straight", fields)
            logger.info("%s", "straight", extra={"fields": fields})
        finally:
            telemetry.end(token)
        await asyncio.sleep(0)

    asyncio.run(both())
    direct, recorded = (json.loads(line) for line in stream.getvalue().splitlines())
    assert direct.pop("time")[:16] == recorded.pop("time")[:16]
    assert direct == recorded
    assert recorded["request_id"] == "the-request" and recorded["path"] == fields["path"]


def test_any_other_configuration_gets_records(
    served_logger: tuple[logging.Logger, io.StringIO, LoopTurnHandler],
) -> None:
    logger, stream, handler = served_logger
    without_capture(logger, handler)
    captured = Lines()
    logger.addHandler(captured)  # a second handler: what tests' capture does
    try:
        assert json_sink(logger, logging.INFO) is None
        info_line(logger, "to both", {"n": 1})
        assert [line["n"] for line in captured.lines] == [1]
    finally:
        logger.removeHandler(captured)
    logger.addFilter(logging.Filter("elsewhere"))  # a filter that drops every record here
    try:
        assert json_sink(logger, logging.INFO) is None
        info_line(logger, "filtered", {"n": 2})
    finally:
        logger.filters.clear()
    handler.setFormatter(logging.Formatter("%(message)s"))
    assert json_sink(logger, logging.INFO) is None
    handler.flush()
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == [1]

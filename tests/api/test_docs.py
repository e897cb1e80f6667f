"""/docs and /redoc work offline: a real headless Chromium renders every operation, and no
request the pages make goes anywhere but the service on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from importlib.metadata import files, requires
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from packaging.requirements import Requirement

from service.api.docpages import ASSETS
from tests.api.test_metrics import requests_total, scrape
from tests.conftest import Server

#: Seconds of page time Chromium gives the scripts before it dumps the DOM; network waits
#: pause this clock, so a slow machine only makes the run longer, not the page emptier.
VIRTUAL_TIME_MS = 10_000


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is not installed: .ci/run installs Debian's chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    return found


def render(url: str, tmp_path: Path) -> tuple[str, list[dict[str, Any]]]:
    """The DOM of ``url`` after its scripts ran, and the requests made for the page.

    The resolver answers nothing but 127.0.0.1, so no request can leave this machine even
    if a page asked for one; the net log still records each request it tried."""
    net_log = tmp_path / "net-log.json"
    profile = tmp_path / "profile"
    profile.mkdir()
    done = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            f"--log-net-log={net_log}",
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, page_requests(json.loads(net_log.read_text(encoding="utf-8")))


def page_requests(log: dict[str, Any]) -> list[dict[str, Any]]:
    """The URL requests made for a page (not Chromium's own background fetches, such as
    update checks): the navigation, and every request whose initiator is a web origin."""
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    starts = [e.get("params", {}) for e in log["events"] if e["type"] == start_job]
    return [
        params
        for params in starts
        if params.get("request_type") == "main frame"
        or params.get("initiator", "not an origin") != "not an origin"
    ]


def operation_ids(document: dict[str, Any]) -> set[str]:
    return {
        operation["operationId"]
        for item in document["paths"].values()
        for method, operation in item.items()
        if method in {"get", "put", "post", "delete", "patch", "head", "options"}
    }


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = Server(tmp_path_factory.mktemp("docs") / "layers.sqlite3").start()
    yield server
    server.stop()


def assert_stays_local(requests: list[dict[str, Any]], server: Server) -> set[str]:
    urls = {params["url"] for params in requests}
    assert urls, "the net log recorded no request for the page"
    strangers = {url for url in urls if urlsplit(url).hostname != "127.0.0.1"}
    assert not strangers, f"the page asked for {sorted(strangers)}"
    origin = urlsplit(server.url).netloc
    return {urlsplit(url).path for url in urls if urlsplit(url).netloc == origin}


def test_swagger_ui_renders_every_operation_from_local_assets(
    docs_server: Server, tmp_path: Path
) -> None:
    dom, requests = render(f"{docs_server.url}/docs", tmp_path)
    paths = assert_stays_local(requests, docs_server)
    assert {"/docs", "/openapi.json", "/docs/assets/swagger-ui-bundle.js"} <= paths
    assert "/docs/assets/favicon.png" in paths
    rendered = set(re.findall(r'id="operations-[^"-]+-([^"]+)"', dom))
    document = httpx.get(f"{docs_server.url}/openapi.json").json()
    assert operation_ids(document) <= rendered


def test_redoc_renders_every_operation_from_local_assets(
    docs_server: Server, tmp_path: Path
) -> None:
    dom, requests = render(f"{docs_server.url}/redoc", tmp_path)
    paths = assert_stays_local(requests, docs_server)
    assert {"/redoc", "/openapi.json", "/docs/assets/redoc.standalone.js"} <= paths
    rendered = set(re.findall(r'data-section-id="operation/([^"]+)"', dom))
    document = httpx.get(f"{docs_server.url}/openapi.json").json()
    assert operation_ids(document) <= rendered


def test_the_pages_name_no_other_host(docs_server: Server) -> None:
    for page in ("/docs", "/redoc"):
        html = httpx.get(f"{docs_server.url}{page}").text
        assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", html), html
        assert "/docs/assets/favicon.png" in html


def test_assets_are_served_by_name_and_nothing_else(docs_server: Server) -> None:
    for name, media_type in ASSETS.items():
        answer = httpx.get(f"{docs_server.url}/docs/assets/{name}")
        assert answer.status_code == 200, name
        assert answer.headers["content-type"] == media_type
        assert len(answer.content) > 1000
    for name in ("core.py", "..%2F__init__.py", "%2e%2e%2fcore.py", "swagger-ui.CSS"):
        answer = httpx.get(f"{docs_server.url}/docs/assets/{name}")
        assert answer.status_code == 404, name
        assert answer.json()["code"] == "not_found"


def test_the_assets_come_with_the_project_s_runtime_dependencies() -> None:
    runtime = [Requirement(r) for r in requires("spatial-dropout-service") or []]
    (offline,) = [r for r in runtime if r.name == "fastapi-offline"]
    assert offline.marker is None  # not an extra: `pip install` of the wheel brings it
    assert str(offline.specifier)  # ranged
    shipped = {path.name for path in files("fastapi-offline") or []}
    assert set(ASSETS) <= shipped


def test_docs_and_the_document_are_labelled_by_their_path_in_metrics(
    docs_server: Server,
) -> None:
    pages = ("/docs", "/redoc", "/openapi.json")
    before = scrape(docs_server.url)
    for page in pages:
        assert httpx.get(f"{docs_server.url}{page}").status_code == 200
    assert httpx.get(f"{docs_server.url}/docs/assets/favicon.png").status_code == 200
    after = scrape(docs_server.url)
    for route in (*pages, "/docs/assets/{name}"):
        labels = {"method": "GET", "route": route, "status": "200"}
        assert requests_total(after, **labels) - requests_total(before, **labels) == 1, route


def test_the_pages_and_their_assets_stay_open_when_reads_need_a_token(tmp_path: Path) -> None:
    from service.api.app import create_app
    from service.settings import Settings
    from tests.inprocess import InProcess

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'layers.sqlite3'}",
        api_tokens="secret",
        auth_reads=True,
    )
    with InProcess(create_app(settings)) as app:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui.css"):
            assert app.get(path).status_code == 200, path
        assert app.get("/layers").status_code == 401  # reads do need one


def test_behind_a_prefix_the_pages_ask_for_everything_under_it(tmp_path: Path) -> None:
    from service.api.app import create_app
    from service.settings import Settings
    from tests.inprocess import InProcess

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'layers.sqlite3'}")
    with InProcess(create_app(settings), root_path="/sd") as app:
        for page, assets in (
            ("/docs", ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")),
            ("/redoc", ("redoc.standalone.js", "favicon.png")),
        ):
            html = app.get(f"/sd{page}").text
            assert "/sd/openapi.json" in html, page
            for name in assets:
                assert f"/sd/docs/assets/{name}" in html, (page, name)
                assert app.get(f"/sd/docs/assets/{name}").status_code == 200, name

"""/metrics: Prometheus text, labels by route template, tensor bytes, the store's count."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import create, unique
from tests.conftest import Server

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    # A new connection for each scrape: with several workers, any of them may answer.
    response = httpx.get(f"{url}/metrics", headers={"Connection": "close"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests_total(samples: Samples, **labels: str) -> float:
    return value(samples, "spatial_dropout_http_requests_total", **labels)


def test_requests_are_counted_by_route_template_not_raw_path(
    client: httpx.Client, server: Server
) -> None:
    names = [create(client)["name"] for _ in range(3)]
    before = scrape(server.url)
    for name in names:
        assert client.get(f"/layers/{name}").status_code == 200
    assert client.get(f"/layers/{unique()}").status_code == 404
    after = scrape(server.url)
    labels = {"method": "GET", "route": "/layers/{ref}"}
    assert (
        requests_total(after, **labels, status="200")
        - requests_total(before, **labels, status="200")
        == 3
    )
    assert (
        requests_total(after, **labels, status="404")
        - requests_total(before, **labels, status="404")
        == 1
    )
    text = httpx.get(f"{server.url}/metrics").text
    assert not any(name in text for name in names)  # raw paths never become labels


def test_latency_histogram_counts_each_request(client: httpx.Client, server: Server) -> None:
    before = scrape(server.url)
    for _ in range(4):
        client.get("/healthz")
    after = scrape(server.url)
    name = "spatial_dropout_http_request_duration_seconds_count"
    labels = {"method": "GET", "route": "/healthz"}
    assert value(after, name, **labels) - value(before, name, **labels) == 4
    inf = value(after, "spatial_dropout_http_request_duration_seconds_bucket", **labels, le="+Inf")
    assert inf == value(after, name, **labels)


def test_unmatched_paths_share_one_label(client: httpx.Client, server: Server) -> None:
    before = scrape(server.url)
    for _ in range(3):
        assert client.get(f"/nowhere/{unique()}").status_code == 404
    after = scrape(server.url)
    labels = {"method": "GET", "route": "unmatched", "status": "404"}
    assert requests_total(after, **labels) - requests_total(before, **labels) == 3


def test_tensor_bytes_in_and_out_for_apply_and_v2(client: httpx.Client, server: Server) -> None:
    layer = create(client, seed=1)
    x = np.ones((2, 3, 4, 5), dtype=np.float32)  # 480 bytes
    before = scrape(server.url)
    response = client.post(
        "/apply", json={"layer": layer["name"], "training": True, "input": x.tolist()}
    )
    assert response.status_code == 200
    data = x.ravel().tolist()
    infer = {"inputs": [{"name": "in", "shape": list(x.shape), "datatype": "FP64", "data": data}]}
    assert client.post(f"/v2/models/{layer['name']}/infer", json=infer).status_code == 200
    after = scrape(server.url)
    name = "spatial_dropout_tensor_bytes_total"
    for route, size in (("/apply", 480), ("/v2/models/{name}/infer", 960)):
        for direction in ("in", "out"):
            labels = {"route": route, "direction": direction}
            assert value(after, name, **labels) - value(before, name, **labels) == size


def test_layers_gauge_reads_the_store_at_scrape_time(client: httpx.Client, server: Server) -> None:
    create(client)
    samples = scrape(server.url)
    assert value(samples, "spatial_dropout_store_up") == 1
    assert value(samples, "spatial_dropout_layers") == client.get("/readyz").json()["layers"]
    create(client)
    assert (
        value(scrape(server.url), "spatial_dropout_layers")
        == value(samples, "spatial_dropout_layers") + 1
    )


def test_metrics_is_not_in_the_api_document(client: httpx.Client) -> None:
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_several_workers_report_one_sum(tmp_path: Path) -> None:
    """With 2 workers, every scrape (whichever worker answers it) counts every request."""
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    (multiproc / "counter_1.db").write_bytes(b"stale samples of an earlier run")
    server = Server(
        tmp_path / "workers.sqlite3",
        env={"SPATIAL_DROPOUT_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(multiproc)},
    ).start()
    try:
        assert not (multiproc / "counter_1.db").exists()  # wiped at start

        def hit(_: int) -> int:
            response = httpx.get(f"{server.url}/healthz", headers={"Connection": "close"})
            return response.status_code

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert set(pool.map(hit, range(40))) == {200}
        labels = {"method": "GET", "route": "/healthz", "status": "200"}
        totals = {requests_total(scrape(server.url), **labels) for _ in range(6)}
        assert totals == {40.0}
        assert list(multiproc.glob("counter_*.db"))  # the workers wrote their samples there
    finally:
        server.stop()


def test_invented_methods_share_one_label(client: httpx.Client, server: Server) -> None:
    before = scrape(server.url)
    for verb in ("PROPFIND", "MKCOL", "LOCK"):  # methods the HTTP parser knows, we do not
        assert client.request(verb, "/layers").status_code == 405
    after = scrape(server.url)
    labels = {"method": "other", "route": "/layers", "status": "405"}
    assert requests_total(after, **labels) - requests_total(before, **labels) == 3
    assert not any(("method", "MKCOL") in key[1] for key in after)

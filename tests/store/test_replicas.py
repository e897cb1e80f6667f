"""Two server processes on one PostgreSQL act as one service: replicas share their layers."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import Server
from tests.postgres import PostgresServer


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer
) -> Iterator[tuple[Server, Server]]:
    url = postgres.new_database()
    env = {"SPATIAL_DROPOUT_DATABASE_URL": url, "SPATIAL_DROPOUT_DATABASE_POOL_SIZE": "4"}
    logs = tmp_path_factory.mktemp("replicas")
    # `database` only names the servers' log files here: the layers live in PostgreSQL.
    servers = (Server(logs / "one.sqlite3", env=env), Server(logs / "two.sqlite3", env=env))
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:  # start both at once
            list(pool.map(Server.start, servers))
        yield servers
    finally:
        for server in servers:
            server.stop()


def test_a_layer_made_through_one_replica_is_applied_through_the_other(
    replicas: tuple[Server, Server],
) -> None:
    one, two = replicas
    made = httpx.post(f"{one.url}/layers", json={"name": "shared", "rate": 0.5, "seed": 7})
    assert made.status_code == 201
    assert httpx.get(f"{two.url}/layers/shared").json() == made.json()
    x = {"shape": [1, 2, 2, 3], "dtype": "float32", "data": list(range(1, 13))}
    request = {"layer": "shared", "training": True, "return_mask": True, "input": x}
    through_two = httpx.post(f"{two.url}/apply", json=request).json()
    assert through_two["mask"] == [[True, False, True]]  # the README's seed-7 mask
    assert httpx.post(f"{one.url}/apply", json=request).json() == through_two
    count = httpx.get(f"{one.url}/readyz").json()["layers"]
    assert count >= 1 and httpx.get(f"{two.url}/readyz").json()["layers"] == count
    assert httpx.delete(f"{two.url}/layers/shared").status_code == 204
    assert httpx.get(f"{two.url}/layers/shared").status_code == 404
    # The other replica's listing reads the shared table (a single GET there may answer from
    # its short per-process cache of layers for a moment).
    listed = httpx.get(f"{one.url}/layers", params={"limit": 1000}).json()["items"]
    assert "shared" not in [layer["name"] for layer in listed]


def test_concurrent_creates_of_one_name_across_replicas_give_one_201(
    replicas: tuple[Server, Server],
) -> None:
    urls = [server.url for server in replicas]

    def create(i: int) -> int:
        response = httpx.post(f"{urls[i % 2]}/layers", json={"name": "race", "rate": 0.1})
        return response.status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(create, range(32)))
    assert statuses.count(201) == 1 and statuses.count(409) == 31


def test_generated_names_stay_distinct_across_replicas(replicas: tuple[Server, Server]) -> None:
    urls = [server.url for server in replicas]

    def create(i: int) -> str:
        spec = {"kind": "spatial_dropout_3d", "rate": 0.1}  # the only test making these
        response = httpx.post(f"{urls[i % 2]}/layers", json=spec)
        assert response.status_code == 201
        name: str = response.json()["name"]
        return name

    with ThreadPoolExecutor(max_workers=8) as pool:
        names = list(pool.map(create, range(20)))
    base = "spatial_dropout3d"
    assert sorted(names) == sorted([base] + [f"{base}_{i}" for i in range(1, 20)])


def test_a_model_stored_through_one_replica_answers_the_same_bytes_through_the_other(
    replicas: tuple[Server, Server],
) -> None:
    from tests.api.test_models import _body, composed, images

    one, two = replicas
    with httpx.Client(base_url=one.url, timeout=60) as client:
        model = composed(client)
        stored = client.put(
            "/models/mc", content=model, headers={"content-type": "application/octet-stream"}
        )
        assert stored.status_code == 201, stored.text
    body = _body(images(2), mc_samples=3, seed=41)
    answers = [httpx.post(f"{s.url}/v2/models/mc/infer", json=body, timeout=60) for s in replicas]
    assert all(a.status_code == 200 for a in answers), answers[0].text
    assert answers[0].content == answers[1].content
    assert httpx.get(f"{two.url}/models/mc/onnx").content == model

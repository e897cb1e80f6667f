"""The service on a PostgreSQL that crashes, restarts, hangs and loses connections.

The server here is the tests' own (these tests stop it), with durable settings: fsync and
synchronous_commit on, so that a crash may lose no acknowledged commit. The service runs as a
real process with its layer cache off, so every request reaches the database.

The bounds asserted are the contract's: during a fault an answer comes within
SPATIAL_DROPOUT_DATABASE_TIMEOUT_SECONDS (2 s) plus a margin a loaded machine needs, and the
service is ready within 5 s of the database accepting connections again. The figures the
README quotes are printed (``pytest -s``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from service.store.database import Database
from tests.conftest import Server
from tests.postgres import PostgresServer, require_bindir

pytestmark = pytest.mark.e2e

TIMEOUT_S = 2.0  # the service's SPATIAL_DROPOUT_DATABASE_TIMEOUT_SECONDS (its default)
#: What "within the bound" allows on a loaded 2-core machine, on top of the bound itself.
MARGIN_S = 2.0
READY_WITHIN_S = 5.0
APP = "spatial-dropout"  # the application_name the service's connections carry


class DurablePostgres(PostgresServer):
    """A PostgreSQL that syncs its commits, and can be crashed, restarted and frozen."""

    def start(self) -> DurablePostgres:
        if os.geteuid() == 0:
            import shutil

            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust")
        self.boot()
        return self

    def boot(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", "server.log", "-w", "start")

    def crash(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def stop(self) -> None:
        if not self.running():  # a test failed while the server was down
            self.boot()
        super().stop()

    def pids(self) -> list[int]:
        """The postmaster (from postmaster.pid) and its children, and no other process."""
        postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == postmaster:
                children.append(int(entry.name))
        return [postmaster, *children]

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Every process of this server stopped (SIGSTOP), its sockets still open."""
        pids = self.pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in reversed(pids):
                os.kill(pid, signal.SIGCONT)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url("layers"), autocommit=True, connect_timeout=5)

    def service_backends(self) -> list[int]:
        with self.admin() as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (APP,)
            ).fetchall()
        return [pid for (pid,) in rows]


@dataclass
class Service:
    pg: DurablePostgres
    server: Server
    client: httpx.Client

    def timed(self, method: str, path: str, **kw: Any) -> tuple[httpx.Response, float]:
        start = time.monotonic()
        response = self.client.request(method, path, **kw)
        return response, time.monotonic() - start

    def ready_after_boot(self) -> float:
        """Seconds from the database accepting connections to /readyz answering 200."""
        self.pg.boot()
        with self.pg.admin():
            accepted = time.monotonic()
        while time.monotonic() - accepted < 30:
            if self.client.get("/readyz").status_code == 200:
                return time.monotonic() - accepted
            time.sleep(0.05)
        pytest.fail("the service did not become ready within 30 s of the database's return")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    bindir = require_bindir()
    pg = DurablePostgres(bindir).start()
    try:
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE layers")
        env = {
            "SPATIAL_DROPOUT_DATABASE_URL": pg.url("layers"),
            "SPATIAL_DROPOUT_LAYER_CACHE_SECONDS": "0",
            "SPATIAL_DROPOUT_DATABASE_POOL_SIZE": "4",
        }
        # `database` only names the server's log file: the layers live in PostgreSQL.
        server = Server(tmp_path_factory.mktemp("faults") / "log.sqlite3", env=env).start()
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                yield Service(pg, server, client)
        finally:
            server.stop()
    finally:
        pg.stop()


def create(client: httpx.Client, name: str) -> httpx.Response:
    return client.post("/layers", json={"name": name, "rate": 0.5, "seed": 3})


def committed(service: Service, prefix: str, n: int) -> dict[str, dict[str, Any]]:
    made = {}
    for i in range(n):
        response = create(service.client, f"{prefix}{i}")
        assert response.status_code == 201, response.text
        made[response.json()["name"]] = response.json()
    return made


def assert_all_there(service: Service, layers: dict[str, dict[str, Any]]) -> None:
    for name, layer in layers.items():
        response = service.client.get(f"/layers/{name}")
        assert response.status_code == 200 and response.json() == layer


def assert_absent(service: Service, names: list[str]) -> None:
    with service.pg.admin() as conn:
        rows = conn.execute("SELECT name FROM layers WHERE name = ANY(%s)", (names,)).fetchall()
    assert rows == []


def assert_unavailable(response: httpx.Response, took: float) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "store_unavailable"
    assert response.headers["Retry-After"] == "1"
    assert took < TIMEOUT_S + MARGIN_S, f"answered after {took:.2f} s"


def figure(name: str, value: str) -> None:
    print(f"\nFIGURE {name}: {value}")


# -- a crash, an outage, a restart ------------------------------------------------------------


def test_a_crash_and_restart_costs_no_layer_and_recovers_within_5_s(service: Service) -> None:
    before = committed(service, "crash-", 10)
    service.pg.crash()
    try:
        answers, refused = outage(service, seconds=20)  # long enough for a backoff to grow
    except BaseException:
        service.pg.boot()  # for the tests that follow
        raise
    to_ready = service.ready_after_boot()
    answers.sort()
    figure(
        "crash: answers during the outage",
        f"{len(answers)}, median {answers[len(answers) // 2] * 1000:.0f} ms, "
        f"slowest {answers[-1] * 1000:.0f} ms",
    )
    figure("crash: ready after restart", f"{to_ready:.2f} s")
    assert to_ready < READY_WITHIN_S
    assert_all_there(service, before)
    assert_absent(service, refused)
    assert create(service.client, "after-crash").status_code == 201


def test_a_layer_this_replica_served_keeps_answering_while_the_database_is_down(
    service: Service,
) -> None:
    committed(service, "held-", 1)  # made, then applied, through this replica
    x = {"shape": [1, 2, 2, 3], "dtype": "float32", "data": list(range(1, 13))}
    apply = {"layer": "held-0", "training": True, "return_mask": True, "input": x}
    before = service.client.post("/apply", json=apply)
    infer = {
        "inputs": [
            {"name": "input", "shape": [1, 2, 2, 3], "datatype": "FP32", "data": list(range(1, 13))}
        ],
        "parameters": {"training": True},
    }
    infer_before = service.client.post("/v2/models/held-0/infer", json=infer)
    assert before.status_code == 200 and infer_before.status_code == 200
    service.pg.crash()
    try:
        during, took = service.timed("POST", "/apply", json=apply)
        infer_during = service.client.post("/v2/models/held-0/infer", json=infer)
        # A name this replica never saw (another replica's layer, or none): it cannot tell.
        never_read, never_took = service.timed(
            "POST", "/apply", json={**apply, "layer": "never-seen"}
        )
        ready, _ = service.timed("GET", "/readyz")
    finally:
        service.ready_after_boot()
    assert during.status_code == 200 and during.json() == before.json()
    assert took < TIMEOUT_S + MARGIN_S
    assert infer_during.status_code == 200
    assert infer_during.json()["outputs"] == infer_before.json()["outputs"]
    assert_unavailable(never_read, never_took)
    assert ready.status_code == 503  # not ready all the same: a balancer routes around it


def outage(service: Service, seconds: float) -> tuple[list[float], list[str]]:
    """Requests while the database is down: the answer times, the names of refused creates."""
    refused: list[str] = []
    answers: list[float] = []
    outage_end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < outage_end:
        response, took = service.timed("GET", "/layers/crash-0")
        assert_unavailable(response, took)
        answers.append(took)
        response, took = service.timed("POST", "/layers", json={"name": f"down-{i}", "rate": 0.1})
        assert_unavailable(response, took)
        assert "nothing was written" in response.json()["detail"]
        refused.append(f"down-{i}")
        ready, took = service.timed("GET", "/readyz")
        assert_unavailable(ready, took)
        assert ready.json()["detail"].startswith("Not ready: PostgreSQL ")
        assert service.client.get("/healthz").status_code == 200
        i += 1
        time.sleep(0.2)
    # A name this replica never served: it cannot tell what it names while the store is away.
    v2 = service.client.post("/v2/models/never-seen/infer", json={"inputs": []})
    assert v2.status_code == 503 and v2.headers["Retry-After"] == "1" and "error" in v2.json()
    return answers, refused


# -- killed backends (a failover, a proxy restart, an idle-connection reaper) ------------------


def warm(service: Service, n: int = 8) -> None:
    """Several requests at once, so the service's pool holds several connections."""
    with ThreadPoolExecutor(max_workers=n) as pool:
        statuses = list(pool.map(lambda _: service.client.get("/layers").status_code, range(n)))
    assert statuses == [200] * n


def test_killed_idle_backends_cost_no_request_a_failure(service: Service) -> None:
    layers = committed(service, "idle-kill-", 3)
    killed = failures = 0
    for _ in range(5):
        warm(service)
        pids = service.pg.service_backends()
        assert pids
        with service.pg.admin() as conn:
            for pid in pids:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        killed += len(pids)
        for name in layers:
            failures += service.client.get(f"/layers/{name}").status_code != 200
        failures += create(service.client, f"idle-kill-after-{killed}").status_code != 201
    figure("killed idle backends: failures", f"{failures} of {killed} killed backends")
    assert failures == 0


def terminate_while_frozen(service: Service, pids: list[int]) -> None:
    """End these backends: SIGTERM is queued on the stopped process, SIGCONT delivers it."""
    with service.pg.admin() as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


def in_thread(fn: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(fn()))
    thread.start()
    return thread, box


def answered(thread: threading.Thread, box: list[Any]) -> httpx.Response:
    thread.join(timeout=30)
    assert not thread.is_alive() and box
    response: httpx.Response = box[0]
    return response


def test_a_backend_killed_under_a_read_costs_the_read_nothing(service: Service) -> None:
    layers = committed(service, "busy-kill-", 1)
    for _ in range(3):
        service.client.get("/layers/busy-kill-0")  # at least one idle pooled connection
        pids = service.pg.service_backends()
        assert pids and set(pids) <= set(service.pg.pids())
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            # The read goes out on a connection whose backend is stopped, and waits for it.
            thread, box = in_thread(lambda: service.client.get("/layers/busy-kill-0"))
            time.sleep(0.3)
        finally:
            terminate_while_frozen(service, pids)
        response = answered(thread, box)
        assert response.status_code == 200 and response.json() == layers["busy-kill-0"]


# -- a write whose acknowledgement is lost -----------------------------------------------------


@contextmanager
def commits_never_acknowledged(service: Service) -> Iterator[None]:
    """A COMMIT is written to disk, then waits for a standby that never comes: its
    acknowledgement stays unsent until the backend is ended."""
    with service.pg.admin() as conn:
        conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        until_commits_wait(service)
        yield
    finally:
        with service.pg.admin() as conn:
            conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
            conn.execute("SELECT pg_reload_conf()")


PROBE = "ack-probe"


def until_commits_wait(service: Service) -> None:
    """pg_reload_conf only signals: the checkpointer turns the standby wait on in shared memory
    when it gets to it. Commit probes until one waits, so the service's next COMMIT will too."""
    deadline = time.monotonic() + TIMEOUT_S * 5
    while time.monotonic() < deadline:
        with (
            psycopg.connect(
                service.pg.url("layers"), autocommit=True, application_name=PROBE
            ) as probe,
            ThreadPoolExecutor(max_workers=1) as pool,
        ):
            # A transactional WAL message gives the probe what makes a COMMIT wait: an id and WAL.
            commit = pool.submit(probe.execute, "SELECT pg_logical_emit_message(true, 'probe', '')")
            waited = False
            with service.pg.admin() as conn:
                while not commit.done() and not waited:
                    waited = bool(
                        conn.execute(
                            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                            "WHERE pid = %s AND wait_event = 'SyncRep'",
                            (probe.info.backend_pid,),
                        ).fetchall()
                    )
                    time.sleep(0.005)
            commit.result(timeout=30)  # a cancelled wait still commits, with a warning
        if waited:
            return
        time.sleep(0.02)
    pytest.fail("no COMMIT waited for the standby after the setting was reloaded")


def end_the_committing_backend(service: Service) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    with service.pg.admin() as conn:
        while time.monotonic() < deadline:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                "AND wait_event = 'SyncRep'",
                (APP,),
            ).fetchall()
            if rows:
                conn.execute("SELECT pg_terminate_backend(%s)", (rows[0][0],))
                return
            time.sleep(0.01)
    pytest.fail("no COMMIT of the service waited for the standby")


def test_a_create_whose_commit_acknowledgement_is_lost_is_its_success(service: Service) -> None:
    service.client.get("/layers")
    with commits_never_acknowledged(service):
        thread, box = in_thread(lambda: create(service.client, "ack-lost"))
        end_the_committing_backend(service)
        response = answered(thread, box)
    assert response.status_code == 201, response.text
    with service.pg.admin() as conn:
        rows = conn.execute("SELECT id FROM layers WHERE name = 'ack-lost'").fetchall()
    assert rows == [(response.json()["id"],)]  # applied once, under the id it was answered with
    assert service.client.get("/layers/ack-lost").json() == response.json()


def test_a_create_with_a_generated_name_is_stored_once(service: Service) -> None:
    spec = {"kind": "spatial_dropout_1d", "rate": 0.2}  # the only test making these
    with commits_never_acknowledged(service):
        thread, box = in_thread(lambda: service.client.post("/layers", json=spec))
        end_the_committing_backend(service)
        response = answered(thread, box)
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "spatial_dropout1d"
    with service.pg.admin() as conn:
        rows = conn.execute("SELECT id FROM layers WHERE name LIKE 'spatial_dropout1d%'").fetchall()
    assert rows == [(response.json()["id"],)]


def test_a_delete_whose_commit_acknowledgement_is_lost_is_its_success(service: Service) -> None:
    assert create(service.client, "ack-lost-delete").status_code == 201
    with commits_never_acknowledged(service):
        thread, box = in_thread(lambda: service.client.delete("/layers/ack-lost-delete"))
        end_the_committing_backend(service)
        response = answered(thread, box)
    assert response.status_code == 204, response.text
    assert service.client.get("/layers/ack-lost-delete").status_code == 404
    assert service.client.delete("/layers/ack-lost-delete").status_code == 404


# -- a hung database ---------------------------------------------------------------------------


def test_a_hung_database_answers_503_within_the_bound_and_recovers(service: Service) -> None:
    before = committed(service, "hang-", 5)
    warm(service)
    n = 12  # three times the pool: most requests wait for a connection first
    with service.pg.frozen():
        with ThreadPoolExecutor(max_workers=n) as pool:
            reads = list(
                pool.map(lambda i: service.timed("GET", f"/layers/hang-{i % 5}"), range(n))
            )
        for response, took in reads:
            assert_unavailable(response, took)
        write, took = service.timed("POST", "/layers", json={"name": "hung-write", "rate": 0.1})
        assert_unavailable(write, took)
        ready, took_ready = service.timed("GET", "/readyz")
        assert_unavailable(ready, took_ready)
        assert (
            ready.json()["detail"]
            == f"Not ready: PostgreSQL did not answer within {TIMEOUT_S:g} s."
        )
        assert service.client.get("/healthz").status_code == 200
        thawed = time.monotonic()
    figure("hung: answer (max of 12 concurrent reads)", f"{max(t for _, t in reads):.2f} s")
    while service.client.get("/readyz").status_code != 200:
        assert time.monotonic() - thawed < READY_WITHIN_S
        time.sleep(0.05)
    figure("hung: ready after SIGCONT", f"{time.monotonic() - thawed:.2f} s")
    assert_all_there(service, before)
    assert "nothing was written" in write.json()["detail"]
    assert_absent(service, ["hung-write"])


def test_a_statement_stuck_on_a_lock_ends_on_the_server_too(service: Service) -> None:
    assert create(service.client, "locked").status_code == 201
    with service.pg.admin() as conn, conn.transaction():
        conn.execute("LOCK TABLE layers IN ACCESS EXCLUSIVE MODE")
        response, took = service.timed("GET", "/layers/locked")
        assert_unavailable(response, took)
        # statement_timeout: the server stops waiting too, so the service's abandoned
        # statement holds no place in the lock queue behind this transaction.
        deadline = time.monotonic() + TIMEOUT_S + MARGIN_S
        with service.pg.admin() as watcher:
            while True:
                waiting = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE application_name = %s AND wait_event_type = 'Lock'",
                    (APP,),
                ).fetchone()
                if waiting == (0,):
                    break
                assert time.monotonic() < deadline, "the service's statement still waits"
                time.sleep(0.05)
    assert service.client.get("/layers/locked").status_code == 200


def test_a_read_only_server_refuses_writes_with_503_and_serves_reads(service: Service) -> None:
    """What a client sees while a failover points it at a standby."""
    assert create(service.client, "before-read-only").status_code == 201
    with service.pg.admin() as conn:
        conn.execute("ALTER DATABASE layers SET default_transaction_read_only = on")
        for pid in service.pg.service_backends():  # new connections take the setting
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    try:
        response, took = service.timed("POST", "/layers", json={"name": "ro", "rate": 0.1})
        assert_unavailable(response, took)
        assert "is read-only" in response.json()["detail"]
        assert service.client.get("/layers/before-read-only").status_code == 200
    finally:
        with psycopg.connect(service.pg.url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute("ALTER DATABASE layers RESET default_transaction_read_only")
    assert_absent(service, ["ro"])
    assert create(service.client, "ro").status_code == 201


def test_a_create_unconfirmed_at_the_deadline_says_it_may_be_stored(service: Service) -> None:
    service.client.get("/layers")
    with commits_never_acknowledged(service):
        response, took = service.timed("POST", "/layers", json={"name": "unsure", "rate": 0.1})
    # It is stored: the COMMIT reached the disk, only its acknowledgement was held back.
    layer = service.client.get("/layers/unsure").json()
    if response.status_code == 201:
        # The server's statement_timeout (which starts a little after the service's deadline)
        # ended the wait first, and PostgreSQL reported the commit: the truth too.
        assert response.json() == layer
        return
    assert_unavailable(response, took)
    detail = response.json()["detail"]
    assert "may or may not be stored" in detail and f"GET /layers/{layer['id']}" in detail


def test_another_table_gets_the_same_guarantees_from_database(service: Service) -> None:
    """What a store of another table (models) inherits: a lost COMMIT acknowledgement is run
    again with ``maybe_applied`` and found done, and reads survive a killed backend."""
    db = Database(service.pg.url("layers"), pool_size=2, timeout=TIMEOUT_S)
    try:
        db.write(lambda conn, _: conn.execute("CREATE TABLE probes (id TEXT PRIMARY KEY)"))
        runs: list[bool] = []

        def insert(conn: psycopg.Connection[Any], maybe_applied: bool) -> str:
            runs.append(maybe_applied)
            if maybe_applied and conn.execute("SELECT 1 FROM probes WHERE id = 'p'").fetchone():
                return "found"
            conn.execute("INSERT INTO probes (id) VALUES ('p')")
            return "inserted"

        with commits_never_acknowledged(service), ThreadPoolExecutor(max_workers=1) as pool:
            outcome = pool.submit(db.write, insert)
            end_the_committing_backend(service)
            assert outcome.result(timeout=30) == "found"
        assert runs == [False, True]
        with service.pg.admin() as conn:
            for pid in service.pg.service_backends():
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert db.read(lambda conn: conn.execute("SELECT count(*) FROM probes").fetchone()) == (1,)
    finally:
        db.close()


def test_a_model_put_whose_commit_acknowledgement_is_lost_is_its_success(
    service: Service,
) -> None:
    from tests.api.test_models import plain

    model = plain()
    headers = {"content-type": "application/octet-stream"}
    with commits_never_acknowledged(service):
        thread, box = in_thread(
            lambda: service.client.put("/models/ack-lost-model", content=model, headers=headers)
        )
        end_the_committing_backend(service)
        response = answered(thread, box)
    assert response.status_code == 201, response.text
    with service.pg.admin() as conn:
        rows = conn.execute("SELECT onnx FROM models WHERE name = 'ack-lost-model'").fetchall()
    assert [bytes(row[0]) for row in rows] == [model]  # stored once, whole
    assert service.client.get("/models/ack-lost-model/onnx").content == model
    with commits_never_acknowledged(service):
        thread, box = in_thread(lambda: service.client.delete("/models/ack-lost-model"))
        end_the_committing_backend(service)
        response = answered(thread, box)
    assert response.status_code == 204, response.text
    assert service.client.get("/models/ack-lost-model").status_code == 404

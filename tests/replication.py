"""A PostgreSQL primary with a synchronous hot standby, for the failover tests: initdb,
pg_basebackup, ``synchronous_standby_names``; the primary killed with SIGKILL, the standby
promoted. Both listen on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from harness.process import free_port
from tests.postgres import SUPERUSER

STANDBY_NAME = "standby"


@dataclass
class ReplicatedPostgres:
    bindir: Path
    primary_port: int = field(default_factory=free_port)
    standby_port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sd-failover-")))

    @property
    def primary(self) -> Path:
        return self.root / "primary"

    @property
    def standby(self) -> Path:
        return self.root / "standby"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SUPERUSER, "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.root, timeout=120)

    def _start(self, data: Path, port: int) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {self.root}"
        log = f"{data.name}.log"
        self._run("pg_ctl", "-D", str(data), "-o", options, "-l", log, "-w", "start")

    def start(self, database: str) -> ReplicatedPostgres:
        if os.geteuid() == 0:
            shutil.chown(self.root, SUPERUSER, SUPERUSER)
        # initdb --auth=trust also lets 127.0.0.1 connect for replication.
        self._run("initdb", "-D", str(self.primary), "-U", SUPERUSER, "--auth=trust", "--no-sync")
        self._start(self.primary, self.primary_port)
        with psycopg.connect(self.url_of(self.primary_port), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        self._run(
            "pg_basebackup",
            "-d",
            f"host=127.0.0.1 port={self.primary_port} user={SUPERUSER} "
            f"application_name={STANDBY_NAME}",
            "-D",
            str(self.standby),
            "-R",  # standby.signal and primary_conninfo (with the application_name above)
            "-X",
            "stream",
            "--no-sync",
        )
        self._start(self.standby, self.standby_port)
        # Only now, and only on the primary (after the base backup, which would copy it): a
        # commit waits for the standby's flush. A promoted standby that waited for a standby
        # of its own would hang every commit.
        with psycopg.connect(self.url_of(self.primary_port), autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
            conn.execute("ALTER SYSTEM SET synchronous_commit = 'on'")
            conn.execute("SELECT pg_reload_conf()")
        self.wait_synchronous()
        return self

    def wait_synchronous(self, timeout: float = 30) -> None:
        """Until the primary reports the standby as its synchronous one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with psycopg.connect(self.url_of(self.primary_port), autocommit=True) as conn:
                rows = conn.execute(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                    (STANDBY_NAME,),
                ).fetchall()
            if rows == [("sync",)]:
                return
            time.sleep(0.1)
        raise AssertionError("the standby never became synchronous")

    def url_of(self, port: int, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{database}"

    def multi_host_url(self, database: str) -> str:
        """libpq's multi-host form: whichever of the two accepts writes."""
        hosts = f"127.0.0.1:{self.primary_port},127.0.0.1:{self.standby_port}"
        return f"postgresql://{SUPERUSER}@{hosts}/{database}?target_session_attrs=read-write"

    def kill_primary(self) -> None:
        """SIGKILL to the primary's postmaster; its backends end when they notice."""
        postmaster = int((self.primary / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGKILL)

    def promote(self) -> None:
        self._run("pg_ctl", "-D", str(self.standby), "-w", "promote")

    def connect(self, database: str) -> psycopg.Connection[Any]:
        """A connection to the standby (the primary, once promoted)."""
        return psycopg.connect(self.url_of(self.standby_port, database), autocommit=True)

    def stop(self) -> None:
        for data in (self.standby, self.primary):
            pid_file = data / "postmaster.pid"
            if pid_file.exists():
                # A killed primary's pid file outlives it: its stop fails, harmlessly.
                with contextlib.suppress(subprocess.CalledProcessError):
                    self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

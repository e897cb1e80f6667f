"""A throwaway PostgreSQL server for the tests: initdb into a temp dir, 127.0.0.1, a free port.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user (which
Debian's package creates) in a directory that user owns. CI installs the package (.ci/run);
elsewhere, without it, the tests that need it are skipped (under CI they fail).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from harness.process import free_port

SUPERUSER = "postgres"


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian's layout first, then PATH)."""
    versions = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")]
    versions.sort(key=lambda bindir: int(bindir.parent.name) if bindir.parent.name.isdigit() else 0)
    if versions:
        return versions[-1]
    found = shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


def require_bindir() -> Path:
    """:func:`find_bindir`, for fixtures: where none is installed the test is skipped, or fails
    under CI (which installs one)."""
    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed: .ci/run installs Debian's postgresql")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    return bindir


@dataclass
class PostgresServer:
    bindir: Path
    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sd-postgres-")))
    #: Addresses it listens on (comma-separated), and who else may connect (pg_hba lines).
    listen: str = "127.0.0.1"
    hba: tuple[str, ...] = ()

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SUPERUSER, "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.root, timeout=120)

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            shutil.chown(self.root, SUPERUSER, SUPERUSER)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--no-sync")
        if self.hba:
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write("".join(f"{line}\n" for line in self.hba))
        options = (
            f"-c listen_addresses={self.listen} -p {self.port} -k {self.root} "
            # A test server: durability buys nothing here, speed does.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", "server.log", "-w", "start")
        return self

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

"""A throwaway PostgreSQL cluster of a test's own (initdb, pg_ctl), to stop and restart at will.

The shared server is never stopped: a test that takes PostgreSQL down starts its own, on a
free port of 127.0.0.1, run by the OS user `postgres` (the server refuses to run as root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg
import pytest

from projector.storage.location import PostgresUrl
from tests.support import free_port

OS_USER = "postgres"
DATABASE = "projector"
HOW_TO_INSTALL = (
    "a throwaway PostgreSQL cluster needs initdb and pg_ctl (Debian: apt-get install postgresql)"
    " and an OS user named postgres"
)
# Durable as production must be: a commit is acknowledged only once its WAL is on disk.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_connections": "100",
    "shared_buffers": "'32MB'",
    "log_min_messages": "warning",
}
PG_CTL_SECONDS = 60


@cache
def bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    return candidates[-1].parent if candidates else None


def cluster_problem() -> str | None:
    """Why no throwaway cluster can be made here, or None when one can."""
    if bin_dir() is None:
        return f"{HOW_TO_INSTALL}: initdb was not found"
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        return f"{HOW_TO_INSTALL}: there is no OS user {OS_USER}"
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != OS_USER:
        return f"{HOW_TO_INSTALL}: run as root or as {OS_USER} to start a cluster as {OS_USER}"
    return None


@dataclass
class Cluster:
    """One cluster in a directory of its own; `url` names its database `projector`."""

    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def server_log(self) -> Path:
        return self.root / "server.log"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> PostgresUrl:
        return PostgresUrl(f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE}")

    def _run(self, tool: str, *args: str) -> None:
        bin_path = bin_dir()
        assert bin_path is not None, HOW_TO_INSTALL
        command = [str(bin_path / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", OS_USER, "--", *command]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PG_CTL_SECONDS, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
                f"\nserver log:\n{self.logs()}"
            )

    def create(self) -> Cluster:
        """initdb with trust authentication, the settings above, and the database `projector`."""
        # --no-sync: only initdb's own files skip the flush; the server runs with fsync=on.
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")
        self._configure()
        self.start()
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f"CREATE DATABASE {DATABASE}")
        return self

    def _configure(self) -> None:
        settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.root}'"}
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.server_log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; mode `immediate` is a crash: no checkpoint, recovery at next start."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def logs(self) -> str:
        return self.server_log.read_text(errors="replace") if self.server_log.exists() else ""


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A new cluster, started; stopped and deleted at the end. Skips (or fails) if impossible."""
    problem = cluster_problem()
    if problem is not None:
        if os.environ.get("PROJECTOR_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PROJECTOR_REQUIRE_POSTGRES=1 but {problem}")
        pytest.skip(problem)
    with created_cluster() as cluster:
        yield cluster


@contextmanager
def created_cluster() -> Iterator[Cluster]:
    """A new cluster under a fresh temporary directory owned by `postgres`; removed after."""
    root = Path(tempfile.mkdtemp(prefix="projector-pg-"))
    try:
        if os.geteuid() == 0:
            user = pwd.getpwnam(OS_USER)
            os.chown(root, user.pw_uid, user.pw_gid)
        cluster = Cluster(root, free_port())
        try:
            yield cluster.create()
        finally:
            if cluster.running():
                cluster.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)

"""`projector serve --workers N` on PostgreSQL: each worker appends itself, one folds."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tests.postgres_support import fresh_database, query
from tests.support import Service, run_cli, sample_bodies, wait_projected_http
from tests.test_workers import READ_PATHS, without_receipt
from tests.workers_support import (
    Load,
    alive,
    children,
    get_all,
    log_lines,
    post_one_by_one,
    unlogged_acknowledgements,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.e2e


def test_two_workers_on_postgresql_store_once_answer_as_one_process_and_survive_kill_9(
    tmp_path: Path,
) -> None:
    bodies = sample_bodies()
    with fresh_database() as url:
        single = Service(tmp_path / "one.sqlite3").start()
        service = Service(
            tmp_path / "unused.sqlite3",
            serve_args=("--workers", "2"),
            extra_env={"PROJECTOR_DB": url.url, "PROJECTOR_ACCESS_LOG": "true"},
        ).start()
        try:
            wait_ready(service)
            assert set(children(service)) == {"http-1", "http-2"}  # no writer process
            for target in (single, service):
                statuses = asyncio.run(post_one_by_one(f"{target.url}/webhooks/refold", bodies))
                assert statuses == [200] * len(bodies)
                wait_projected_http(target.url)
            assert without_receipt(asyncio.run(get_all(service.url, READ_PATHS))) == (
                without_receipt(asyncio.run(get_all(single.url, READ_PATHS)))
            )
            answered = {
                line["worker"]
                for line in log_lines(service)
                if line.get("message") == "request" and line.get("route") == "/webhooks/refold"
            }
            assert answered == {"http-1", "http-2"}
            load = Load(service, tmp_path / "acks.txt")
            try:
                load.wait_for_more(0)
                for name in ("http-1", "http-2"):
                    pid = children(service)[name]
                    os.kill(pid, signal.SIGKILL)
                    wait_until(
                        lambda name=name, pid=pid: children(service)[name] != pid, 10, "a restart"
                    )
                    load.wait_for_more(load.acked())
            finally:
                load.stop()
            assert service.stop() == 0
        finally:
            single.stop()
            service.kill()
        logged = [bytes(row[0]) for row in asyncio.run(query(url, "SELECT body FROM deliveries"))]
        assert unlogged_acknowledgements(load.acks, logged) == 0
        verified = run_cli("verify", env=service.env)
        assert verified.returncode == 0, verified.stdout + verified.stderr


def test_postgresql_workers_exit_by_themselves_when_the_supervisor_is_killed(
    tmp_path: Path,
) -> None:
    with fresh_database() as url:
        service = Service(
            tmp_path / "unused.sqlite3",
            serve_args=("--workers", "2"),
            extra_env={"PROJECTOR_DB": url.url},
        ).start()
        wait_ready(service)
        pids = children(service)
        assert len(pids) == 2
        service.kill()
        wait_until(lambda: not any(alive(pid) for pid in pids.values()), 15, "every child's exit")

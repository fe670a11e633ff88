"""`projector serve --workers N` on SQLite: real processes, real HTTP, real signatures."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from tests.alerting_support import expected_alerts, receiving, until
from tests.support import AUTH, SAMPLE, Service, run_cli, sample_bodies, service_env, signed
from tests.workers_support import (
    Load,
    alive,
    children,
    get_all,
    log_lines,
    post_one_by_one,
    status_of,
    unlogged_acknowledgements,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.e2e

# Read-model answers, and the audit trail (compared without the moments of receipt).
READ_PATHS = (
    "/v1/connections?environment=live&limit=500",
    "/v1/connections?environment=test&limit=500",
    "/v1/accounts/12345/connections?environment=live",
    "/v1/accounts/12345/workflow-runs?environment=live",
    "/v1/workflow-runs/2bc19b396e45b3399298ee63?environment=test",
    "/v1/events?environment=live&limit=1000",
    "/v1/events?environment=test&limit=1000",
)


def workers(db: Path, n: int = 2, **extra: str) -> Service:
    return Service(db, serve_args=("--workers", str(n)), extra_env=extra)


def without_receipt(answer: object) -> object:
    """`answer` without its received_at fields: the two services received at other moments."""
    if isinstance(answer, dict):
        return {k: without_receipt(v) for k, v in answer.items() if k != "received_at"}
    if isinstance(answer, list):
        return [without_receipt(v) for v in answer]
    return answer


def logged_bodies(db: Path) -> list[bytes]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [bytes(row[0]) for row in conn.execute("SELECT body FROM deliveries ORDER BY seq")]


def test_two_workers_store_each_delivery_once_and_answer_as_one_process_does(
    tmp_path: Path,
) -> None:
    bodies = sample_bodies()
    single = Service(tmp_path / "one.sqlite3").start()
    service = workers(tmp_path / "two.sqlite3", PROJECTOR_ACCESS_LOG="true").start()
    try:
        wait_ready(service)
        # In order, each on a new connection: both services give each body the same seq.
        for target in (single, service):
            statuses = asyncio.run(post_one_by_one(f"{target.url}/webhooks/refold", bodies))
            assert statuses == [200] * len(bodies)
        # No wait for the projector: a 200 means folded in its commit, as in one process.
        assert without_receipt(asyncio.run(get_all(service.url, READ_PATHS))) == (
            without_receipt(asyncio.run(get_all(single.url, READ_PATHS)))
        )
        answered = {
            line["worker"]
            for line in log_lines(service)
            if line.get("message") == "request" and line.get("route") == "/webhooks/refold"
        }
        assert answered == {"http-1", "http-2"}
    finally:
        single.stop()
        assert service.stop() == 0
    assert logged_bodies(tmp_path / "two.sqlite3") == bodies
    assert run_cli("verify", env=service.env).returncode == 0


def test_an_acknowledged_delivery_is_read_at_once_through_the_same_worker(
    tmp_path: Path,
) -> None:
    """A cached answer is dropped before the writer's answer to the append reaches the worker."""
    service = workers(tmp_path / "two.sqlite3").start()
    wait_ready(service)
    path = f"{service.url}/v1/accounts/acct_fresh/connections?environment=live"
    slugs = [f"app{n}" for n in range(20)]
    try:
        opener = urllib.request.build_opener()  # keep-alive: one worker answers all of these
        for n, slug in enumerate(slugs):
            with opener.open(urllib.request.Request(path, headers=AUTH), timeout=10) as answer:
                assert answer.read().count(b'"slug"') == n  # read, and now cached
            body = (
                b'{"linked_account_id":"acct_fresh","org_id":"o","environment":"live",'
                b'"type":"General","event":"Connection Created","slug":"%s",'
                b'"createdAt":"Tue, 07 Nov 2023 08:38:33 GMT"}' % slug.encode()
            )
            post = urllib.request.Request(
                f"{service.url}/webhooks/refold", data=body, headers=signed(body), method="POST"
            )
            with opener.open(post, timeout=10) as answer:
                assert answer.status == 200
        with opener.open(urllib.request.Request(path, headers=AUTH), timeout=10) as answer:
            assert answer.read().count(b'"slug"') == len(slugs)
    finally:
        service.stop()


async def _read_then_post_then_read(base: str, slugs: list[str]) -> list[int]:
    """For each slug: read the banner 6 times, post its creation, read 6 times again; each
    request on a new connection, so either worker may take it. The slug counts seen after."""
    path = f"{base}/v1/accounts/acct_any/connections?environment=live"
    seen: list[int] = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for slug in slugs:
            for _ in range(6):  # both workers now keep this answer, most likely
                async with session.get(path, headers=AUTH) as answer:
                    assert answer.status == 200
            body = (
                b'{"linked_account_id":"acct_any","org_id":"o","environment":"live",'
                b'"type":"General","event":"Connection Created","slug":"%s",'
                b'"createdAt":"Tue, 07 Nov 2023 08:38:33 GMT"}' % slug.encode()
            )
            url = f"{base}/webhooks/refold"
            async with session.post(url, data=body, headers=signed(body)) as answer:
                assert answer.status == 200
            for _ in range(6):
                async with session.get(path, headers=AUTH) as answer:
                    seen.append((await answer.read()).count(b'"slug"'))
    return seen


def test_an_acknowledged_delivery_is_read_at_once_through_either_worker(
    tmp_path: Path,
) -> None:
    """No worker serves an answer it kept from before a delivery another worker acknowledged."""
    service = workers(tmp_path / "two.sqlite3", PROJECTOR_ACCESS_LOG="true").start()
    try:
        wait_ready(service)
        slugs = [f"app{n}" for n in range(15)]
        seen = asyncio.run(_read_then_post_then_read(service.url, slugs))
        assert seen == [n for n in range(1, len(slugs) + 1) for _ in range(6)]
        read_by = {
            line["worker"]
            for line in log_lines(service)
            if line.get("message") == "request" and line.get("method") == "GET"
        }
        assert read_by == {"http-1", "http-2"}  # the precondition: both workers kept answers
    finally:
        assert service.stop() == 0


def test_kill_9_of_a_worker_and_of_the_writer_under_load_loses_no_acknowledged_delivery(
    tmp_path: Path,
) -> None:
    db = tmp_path / "two.sqlite3"
    service = workers(db).start()
    wait_ready(service)
    load = Load(service, tmp_path / "acks.txt")
    try:
        load.wait_for_more(0)
        for name in ("http-1", "writer", "http-2"):
            pid = children(service)[name]
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda name=name, pid=pid: children(service)[name] != pid, 10, "a restart")
            # The service recovers by itself: the load keeps getting 200s.
            load.wait_for_more(load.acked())
    finally:
        summary = load.stop()
        code = service.stop()
    assert code == 0
    assert "503" in summary["outcomes"] or "ServerDisconnectedError" in summary["outcomes"]
    assert unlogged_acknowledgements(load.acks, logged_bodies(db)) == 0
    verified = run_cli("verify", env=service.env)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    exits = [line for line in log_lines(service) if line.get("message") == "worker_exited"]
    assert [(line["worker"], line["exit_status"]) for line in exits] == [
        ("http-1", "killed by SIGKILL"),
        ("writer", "killed by SIGKILL"),
        ("http-2", "killed by SIGKILL"),
    ]


def test_without_its_writer_a_worker_answers_503_with_retry_after_and_is_not_ready(
    tmp_path: Path,
) -> None:
    service = workers(tmp_path / "two.sqlite3").start()
    wait_ready(service)
    assert service.process is not None
    body = SAMPLE.read_bytes().splitlines()[0]
    post = urllib.request.Request(
        f"{service.url}/webhooks/refold", data=body, headers=signed(body), method="POST"
    )
    try:
        # Stopped, the supervisor cannot restart the writer: the workers stay without one.
        os.kill(service.process.pid, signal.SIGSTOP)
        writer = children(service)["writer"]
        os.kill(writer, signal.SIGKILL)
        wait_until(lambda: not alive(writer), 10, "the writer's end")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(post, timeout=10)
        assert refused.value.code == 503
        assert refused.value.headers["Retry-After"] == "5"
        assert b"retry later" in refused.value.read()
        assert status_of(f"{service.url}/readyz") == 503
        assert status_of(f"{service.url}/healthz") == 200
        os.kill(service.process.pid, signal.SIGCONT)
        wait_ready(service)
        with urllib.request.urlopen(post, timeout=10) as answer:
            assert answer.status == 200
    finally:
        os.kill(service.process.pid, signal.SIGCONT)
        service.stop()


def test_children_exit_by_themselves_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    service = workers(tmp_path / "two.sqlite3").start()
    wait_ready(service)
    pids = children(service)
    assert set(pids) == {"writer", "http-1", "http-2"}
    assert all(alive(pid) for pid in pids.values())
    socket = writer_socket(pids)
    assert socket.parent.stat().st_mode & 0o777 == 0o700
    assert socket.stat().st_mode & 0o777 == 0o600
    service.kill()
    wait_until(lambda: not any(alive(pid) for pid in pids.values()), 15, "every child's exit")
    # The writer removed the supervisor's private directory, which the supervisor could not.
    assert not socket.parent.exists()


def writer_socket(pids: dict[str, int]) -> Path:
    """Where the writer process listens, read from its environment."""
    environ = Path(f"/proc/{pids['writer']}/environ").read_bytes().split(b"\0")
    found = [v for v in environ if v.startswith(b"PROJECTOR_WRITER_SOCKET=")]
    return Path(found[0].split(b"=", 1)[1].decode())


@pytest.mark.parametrize("reuse_port", [False, True])
def test_a_port_already_listened_on_stops_the_supervisor_before_any_child_starts(
    tmp_path: Path, reuse_port: bool
) -> None:
    """Even a listener that allows SO_REUSEPORT (another `--workers` service of this user,
    say) is refused: the workers would otherwise share its connections without a word."""
    with socket.socket() as taken:
        if reuse_port:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = run_cli(
            "serve",
            "--workers",
            "2",
            "--port",
            port,
            env=service_env(tmp_path / "two.sqlite3"),
            timeout=60,
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "worker_started" not in result.stderr


def test_a_child_configuration_error_stops_the_supervisor_with_exit_2(tmp_path: Path) -> None:
    """The writer process cannot open a log newer than this code: exit 2, saying why."""
    db = tmp_path / "newer.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
        conn.execute("CREATE TABLE written_by_a_newer_release (x)")
    result = run_cli("serve", "--workers", "2", env=service_env(db), timeout=60)
    assert result.returncode == 2
    assert "log schema version 99" in result.stderr
    assert "writer_failed_to_start" in result.stderr


@pytest.mark.parametrize(
    ("args", "env"),
    [(("--workers", "0"), {}), (("--workers", "two"), {}), ((), {"PROJECTOR_WORKERS": "-1"})],
)
def test_a_bad_worker_count_is_a_configuration_error_saying_what_to_set(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    result = run_cli("serve", *args, env=service_env(tmp_path / "x.sqlite3", **env), timeout=60)
    assert result.returncode == 2
    assert "PROJECTOR_WORKERS (or --workers)" in result.stderr
    assert "whole number from 1 to 64" in result.stderr


async def test_on_sqlite_the_writer_process_alone_sends_each_alert_once(tmp_path: Path) -> None:
    db = tmp_path / "two.sqlite3"
    async with receiving() as receiver:
        env = {
            "PROJECTOR_ALERT_URL": receiver.url,
            "PROJECTOR_ALERT_RETRY_SECONDS": "0.2",
            "PROJECTOR_ALERT_MAX_PER_MINUTE": "10000",  # each alert on its own, no summary
        }
        service = await asyncio.to_thread(workers(db, **env).start)
        try:
            await asyncio.to_thread(wait_ready, service)
            statuses = await post_one_by_one(f"{service.url}/webhooks/refold", sample_bodies())
            assert set(statuses) == {200}
            expected = expected_alerts(db)
            assert expected  # the sample raises alerts: the check below means something
            await until(lambda: len(receiver.alerted()) >= len(expected), 30, "every alert")
            await asyncio.sleep(1)  # time for a second sender, were there one, to repeat them
        finally:
            assert await asyncio.to_thread(service.stop) == 0
    assert sorted(receiver.alerted(), key=lambda kind_seq: kind_seq[1]) == expected
    senders = {
        line["worker"] for line in log_lines(service) if line.get("message") == "alerting_started"
    }
    assert senders == {"writer"}


def test_a_stray_worker_role_variable_is_a_configuration_error(tmp_path: Path) -> None:
    env = service_env(tmp_path / "x.sqlite3", PROJECTOR_WORKER_ROLE="http")
    result = run_cli("serve", env=env, timeout=60)
    assert result.returncode == 2
    assert "PROJECTOR_WORKER_ROLE is set" in result.stderr
    assert "unset it" in result.stderr

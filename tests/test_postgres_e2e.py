"""Several real `projector serve` processes on one PostgreSQL database, under load and faults.

Kills (SIGKILL) of a receiver and of the folding process, connections cut by the server,
and PostgreSQL itself crashing (a throwaway cluster of the test's own): after each, every
200 is in the log, seq is 1..N, verify passes and the read models equal a rebuild.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from projector.storage.location import PostgresUrl
from tests import pg_audit
from tests.pg_cluster import Cluster, throwaway_cluster
from tests.pg_load import Load
from tests.pg_processes import (
    Reader,
    lease_holder,
    pg_service,
    start_all,
    wait_folded,
    wait_for_holder,
)
from tests.postgres_support import ADMIN_URL, fresh_database
from tests.support import Service

pytestmark = pytest.mark.e2e

TAKEOVER_BOUND_SECONDS = 30  # generous: the lease is 6 s; the figure itself is printed
OUTAGE_SECONDS = 2.0


@pytest.fixture
def database() -> Iterator[PostgresUrl]:
    with fresh_database() as url:
        yield url


@pytest.fixture
async def one(database: PostgresUrl, tmp_path: Path) -> AsyncIterator[Service]:
    """One started service on the fresh database; killed at the end."""
    service = pg_service(database, tmp_path)
    try:
        await start_all([service])
        yield service
    finally:
        service.kill()


@pytest.fixture
async def two(database: PostgresUrl, tmp_path: Path) -> AsyncIterator[list[Service]]:
    """Two started services on the fresh database; killed at the end."""
    services = [pg_service(database, tmp_path), pg_service(database, tmp_path)]
    try:
        await start_all(services)
        yield services
    finally:
        for service in services:
            service.kill()


async def assert_log_sound(url: PostgresUrl, load: Load, base: str) -> pg_audit.LogAudit:
    """The whole audit, once the load has stopped and `base` has folded everything."""
    assert await wait_folded(base, seconds=30), "the projections did not reach the log head"
    audit = await pg_audit.audit_log(url, load)
    assert audit.ok, audit.line()
    assert audit.acknowledged > 0, audit.line()
    verified, printed = await pg_audit.verify(url)
    assert verified, printed
    assert await pg_audit.live_equals_rebuild(url) == []
    return audit


async def kill(service: Service) -> float:
    """SIGKILL `service`; the moment it was dead (time.monotonic())."""
    await asyncio.to_thread(service.kill)
    return time.monotonic()


def service_with_pid(services: list[Service], pid: int) -> Service:
    return next(s for s in services if s.process is not None and s.process.pid == pid)


def pids(services: list[Service]) -> set[int]:
    return {s.process.pid for s in services if s.process is not None}


async def test_two_processes_share_the_log_and_killing_one_loses_nothing_acknowledged(
    database: PostgresUrl, two: list[Service]
) -> None:
    holder_pid = await wait_for_holder(database, pids(two))
    assert holder_pid is not None, "neither process took the projector lease"
    survivor = service_with_pid(two, holder_pid)
    victim = next(s for s in two if s is not survivor)  # the receiver that does not fold
    load = Load([s.url for s in two]).start(max_seconds=60)
    try:
        assert await load.wait_for_acks(150), load.statuses()
        killed_at = await kill(victim)
        load.targets[:] = [survivor.url]
        acked_at_kill = len(load.acked())
        assert await load.wait_for_acks(acked_at_kill + 150), load.statuses(killed_at)
    finally:
        await load.stop()
    acked_by = {s.url: sum(o.target == s.url for o in load.acked()) for s in two}
    assert all(acked_by.values()), f"both processes must have stored deliveries: {acked_by}"
    assert "500" not in load.statuses(), load.statuses()
    await assert_log_sound(database, load, survivor.url)


async def test_when_the_folding_process_is_killed_the_other_takes_over_the_lease(
    database: PostgresUrl, two: list[Service]
) -> None:
    holder_pid = await wait_for_holder(database, pids(two))
    assert holder_pid is not None, "neither process took the projector lease"
    holder = await lease_holder(database)
    assert holder is not None
    victim = service_with_pid(two, holder_pid)
    survivor = next(s for s in two if s is not victim)
    load = Load([s.url for s in two]).start(max_seconds=90)
    try:
        assert await load.wait_for_acks(150), load.statuses()
        killed_at = await kill(victim)
        load.targets[:] = [survivor.url]
        # A delivery sent after the kill: folded only once the survivor holds the lease.
        first = await load.first_ack_after(killed_at)
        assert first is not None, load.statuses(killed_at)
        assert first.seq is not None
        folded = await wait_folded(survivor.url, first.seq, seconds=TAKEOVER_BOUND_SECONDS)
        takeover = time.monotonic() - killed_at
    finally:
        await load.stop()
    print(f"\nprojector takeover after SIGKILL of the lease holder: {takeover:.2f} s")
    assert folded, f"no takeover within {TAKEOVER_BOUND_SECONDS} s"
    after = await lease_holder(database)
    assert after is not None
    assert after[0] in pids([survivor]), f"the survivor must hold the lease: {after}"
    assert after[1] > holder[1], f"the new holder's epoch must be newer: {holder} -> {after}"
    await assert_log_sound(database, load, survivor.url)


async def terminate_connections(url: PostgresUrl) -> int:
    """Have the server end every connection to `url`'s database; how many it ended."""
    name = urlsplit(url.url).path.lstrip("/")
    async with await psycopg.AsyncConnection.connect(ADMIN_URL, autocommit=True) as admin:
        cur = await admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def test_a_receiver_whose_connections_are_cut_recovers_by_itself_without_500s(
    database: PostgresUrl, one: Service
) -> None:
    load = Load([one.url]).start(max_seconds=60)
    reader = Reader(one.url).start(max_seconds=60)
    try:
        assert await load.wait_for_acks(150), load.statuses()
        cut = 0
        for _ in range(3):  # every connection: the appender's, the readers', the projector's
            cut += await terminate_connections(database)
            cut_at = time.monotonic()
            await asyncio.sleep(0.5)
        acked_before = sum(1 for o in load.acked() if o.sent_at <= cut_at)
        assert await load.wait_for_acks(acked_before + 150), load.statuses(cut_at)
        reads_came_back = await reader.answered_since(cut_at)
    finally:
        await load.stop()
        await reader.stop()
    assert cut > 0, "the test cut no connection: nothing was proved"
    assert reads_came_back, f"reads did not answer after the cut: {reader.statuses}"
    assert "500" not in load.statuses(), load.statuses()
    assert "500" not in reader.statuses, reader.statuses
    refused = [o for o in load.outcomes if o.status == 503]
    assert all(o.retry_after for o in refused), "a 503 without Retry-After"
    print(f"\n{cut} connections cut; deliveries {load.statuses()}, reads {reader.statuses}")
    await assert_log_sound(database, load, one.url)


async def test_postgresql_stopped_under_load_answers_503_quickly_and_recovers_losing_nothing(
    tmp_path: Path,
) -> None:
    with throwaway_cluster() as cluster:
        services = [pg_service(cluster.url, tmp_path), pg_service(cluster.url, tmp_path)]
        try:
            await start_all(services)
            await _crash_postgresql_under_load(cluster, services)
        finally:
            for service in services:
                service.kill()


async def _crash_postgresql_under_load(cluster: Cluster, services: list[Service]) -> None:
    load = Load([s.url for s in services]).start(max_seconds=90)
    reader = Reader(services[0].url).start(max_seconds=90)
    try:
        assert await load.wait_for_acks(150), load.statuses()
        await asyncio.to_thread(cluster.stop, "immediate")  # a crash: recovery at next start
        down_at = time.monotonic()
        await asyncio.sleep(OUTAGE_SECONDS)
        up_at = time.monotonic()
        await asyncio.to_thread(cluster.start)  # returns once recovery is done
        ready_at = time.monotonic()
        acked_before = len(load.acked())
        assert await load.wait_for_acks(acked_before + 150, seconds=60), load.statuses(up_at)
        reads_came_back = await reader.answered_since(up_at)
    finally:
        await load.stop()
        await reader.stop()
    during = [o for o in load.outcomes if down_at <= o.sent_at and o.sent_at + o.seconds < up_at]
    assert during, "no delivery was sent while PostgreSQL was down: nothing was proved"
    # Every one answered (no hang until the client gave up), each a 503 that says when to retry.
    assert {o.status for o in during} == {503}, load.statuses(down_at)
    assert all(o.retry_after for o in during), "a 503 without Retry-After"
    slowest = max(o.seconds for o in during)
    first_ack = min(o.sent_at + o.seconds for o in load.acked() if o.sent_at >= up_at)
    print(
        f"\nPostgreSQL down {up_at - down_at:.1f} s: {len(during)} deliveries answered 503,"
        f" slowest {slowest:.3f} s; restarted, it was ready {ready_at - up_at:.2f} s later"
        f" (crash recovery) and the first 200 came {first_ack - up_at:.2f} s later;"
        f" all answers {load.statuses()}; reads {reader.statuses}"
    )
    assert reads_came_back, f"reads did not answer after the restart: {reader.statuses}"
    assert "500" not in reader.statuses, reader.statuses
    assert "500" not in load.statuses(), load.statuses()
    await assert_log_sound(cluster.url, load, services[0].url)

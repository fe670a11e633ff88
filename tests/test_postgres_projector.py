"""The PostgreSQL projector: folds equal a rebuild, the lease fences out a former holder."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from projector.readmodels import CONNECTION_HEALTH, WORKFLOW_RUNS
from projector.storage.location import PostgresUrl
from projector.storage.port import StorageUnavailable
from projector.storage.postgres import folding, open_maintenance
from tests.postgres_support import (
    eventually,
    fold_all,
    opened,
    positions,
    query,
    read_models,
)
from tests.storage_support import (
    BROKEN_BODY,
    BROKEN_SLUG,
    NAMES,
    ODD_BODY,
    delivery_of,
    fail_on_broken_slug,
    new_delivery,
    rebuilt,
    sample_deliveries,
)


async def test_folding_as_deliveries_arrive_equals_a_rebuild_here_and_on_sqlite(
    pg_url: PostgresUrl, tmp_path: Path
) -> None:
    deliveries = [*sample_deliveries(), new_delivery(ODD_BODY, "live")]
    async with opened(pg_url) as storage:
        for start in range(0, len(deliveries), 50):
            await asyncio.gather(*(storage.log.append(d) for d in deliveries[start : start + 50]))
            await fold_all(storage.projector, limit=70)
        live = await read_models(pg_url)
        maintenance = await open_maintenance(pg_url)
        try:
            assert await maintenance.rebuild() == len(deliveries)
        finally:
            await maintenance.close()
    assert await positions(pg_url) == dict.fromkeys(NAMES, len(deliveries))
    assert live["connections"]
    assert live["workflow_runs"]
    assert await read_models(pg_url) == live
    assert rebuilt(tmp_path / "fresh.sqlite3", deliveries) == live


async def test_a_former_holder_whose_lease_expired_folds_nothing_once_another_took_over(
    pg_url: PostgresUrl,
) -> None:
    first, second = sample_deliveries()[:2]
    async with opened(pg_url) as a, opened(pg_url) as b:
        await a.log.append(first)
        assert await fold_all(a.projector) == 1
        assert await query(pg_url, "SELECT epoch FROM projector_lease") == [(1,)]
        assert await b.projector.fold_new(500) == 0  # the lease is A's
        assert not b.projector.active

        # A is paused past its lease (as a stalled process would be); B takes over.
        await query(pg_url, "UPDATE projector_lease SET lease_until = now() - interval '1 s'")
        await b.log.append(second)

        async def b_folded_one() -> bool:
            return await b.projector.fold_new(1) == 1  # B tries to claim once a second

        assert await eventually(b_folded_one)
        assert b.projector.active
        assert await query(pg_url, "SELECT owner, epoch FROM projector_lease") == [
            (b.projector.owner, 2)
        ]

        await a.log.append(first)  # a third delivery: A, resumed, must not fold it
        assert a.projector.active  # A's own clock has not noticed yet
        assert await a.projector.fold_new(500) == 0
        assert not a.projector.active
        assert await positions(pg_url) == dict.fromkeys(NAMES, 2)
        assert await fold_all(b.projector) == 1
    assert await positions(pg_url) == dict.fromkeys(NAMES, 3)


async def test_a_standby_takes_over_once_the_holder_stops_renewing_and_not_before(
    pg_url: PostgresUrl,
) -> None:
    async with opened(pg_url, lease_seconds=1.0) as a, opened(pg_url, lease_seconds=1.0) as b:
        await a.log.append(sample_deliveries()[0])
        await fold_all(a.projector)
        [(held_until,)] = await query(pg_url, "SELECT lease_until FROM projector_lease")
        assert await b.projector.fold_new(500) == 0

        async def b_took_over() -> bool:  # A is never called again: it stops renewing
            await b.projector.fold_new(500)
            return b.projector.active

        assert await eventually(b_took_over, seconds=15)
        [(owner, epoch, until)] = await query(
            pg_url, "SELECT owner, epoch, lease_until FROM projector_lease"
        )
    assert (owner, epoch) == (b.projector.owner, 2)
    # B claimed (at lease_until - 1 s, by the database's clock) only after A's lease ran out.
    assert until - timedelta(seconds=1) > held_until


async def test_a_fold_error_is_recorded_and_the_projector_goes_on(
    pg_url: PostgresUrl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = replace(CONNECTION_HEALTH, fold=fail_on_broken_slug)
    monkeypatch.setattr(folding, "READ_MODELS", (broken, WORKFLOW_RUNS))
    deliveries = sample_deliveries()[:60]
    deliveries.insert(30, delivery_of(BROKEN_BODY))
    async with opened(pg_url) as storage:
        for delivery in deliveries:
            await storage.log.append(delivery)
        await fold_all(storage.projector, limit=25)
    assert await query(pg_url, "SELECT name, seq, error FROM projection_errors") == [
        ("connection_health", 31, "RuntimeError: fold bug on brokenapp")
    ]
    assert await positions(pg_url) == dict.fromkeys(NAMES, len(deliveries))
    expected = rebuilt(tmp_path / "fresh.sqlite3", deliveries)
    tables = await read_models(pg_url)
    assert tables["workflow_runs"] == expected["workflow_runs"]
    assert tables["connections"] == [r for r in expected["connections"] if r[2] != BROKEN_SLUG]


async def test_the_state_token_moves_with_a_fold_of_any_process(pg_url: PostgresUrl) -> None:
    async with opened(pg_url) as folder, opened(pg_url) as watcher:
        before = await watcher.projector.state_token()
        await folder.log.append(sample_deliveries()[0])
        assert await watcher.projector.state_token() == before  # appended, not folded yet
        await fold_all(folder.projector)
        assert await watcher.projector.state_token() != before


async def test_a_commit_in_another_process_wakes_a_waiting_projector(pg_url: PostgresUrl) -> None:
    async with opened(pg_url) as appender, opened(pg_url) as waiter:
        await waiter.projector.wait_for_appends(0.05)  # starts listening (and wakes once)
        await waiter.projector.wait_for_appends(0.05)
        waiting = asyncio.create_task(waiter.projector.wait_for_appends(30.0))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await appender.log.append(sample_deliveries()[0])
        async with asyncio.timeout(20):  # a bound on the test, well short of the poll
            await waiting


async def test_the_projector_connection_cut_is_storage_unavailable_then_it_goes_on(
    pg_url: PostgresUrl,
) -> None:
    async with opened(pg_url) as storage:
        await storage.log.append(sample_deliveries()[0])
        await fold_all(storage.projector)
        assert storage.projector._conn is not None
        pid = storage.projector._conn.info.backend_pid
        await query(pg_url, "SELECT pg_terminate_backend(%s)", pid)
        await storage.log.append(sample_deliveries()[1])
        with pytest.raises(StorageUnavailable, match="folding the log"):
            await storage.projector.fold_new(500)
        assert await fold_all(storage.projector) == 1  # on a new connection
    assert await positions(pg_url) == dict.fromkeys(NAMES, 2)

"""PostgresStorage as the service uses it: reads, back-pressure, shutdown, several processes."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from projector.app import build_app
from projector.config import load_settings
from projector.storage.location import PostgresUrl
from projector.storage.port import Overloaded
from tests.postgres_support import eventually, fold_all, opened, query
from tests.storage_support import sample_deliveries
from tests.support import AUTH, READ_TOKEN, SIGNING_KEYS


async def test_the_shared_read_queries_run_on_postgresql(pg_url: PostgresUrl) -> None:
    """SQL written once with `?` placeholders answers on PostgreSQL as the API expects."""
    deliveries = sample_deliveries()[:20]
    async with opened(pg_url) as storage:
        for delivery in deliveries:
            await storage.log.append(delivery)
        environment = deliveries[0].environment
        page = await storage.reads.audit_events(environment, None, None, 2, 3, None)
    expected = [
        seq
        for seq in range(3, len(deliveries) + 1)
        if deliveries[seq - 1].environment == environment
    ][:3]
    assert [event.seq for event in page.events] == expected
    assert [event.environment for event in page.events] == [environment] * len(expected)


async def test_appends_beyond_max_pending_are_refused_as_overloaded(pg_url: PostgresUrl) -> None:
    first, second, third = sample_deliveries()[:3]
    async with opened(pg_url, max_pending=2) as storage:
        queued = [asyncio.create_task(storage.log.append(d)) for d in (first, second)]
        await asyncio.sleep(0)  # both are queued; the appender has not taken them yet
        with pytest.raises(Overloaded, match="2 deliveries are waiting"):
            await storage.log.append(third)
        assert [(await task).seq for task in queued] == [1, 2]
        assert storage.log.pending == 0


async def test_closing_commits_every_append_already_queued(pg_url: PostgresUrl) -> None:
    deliveries = sample_deliveries()[:300]
    async with opened(pg_url) as storage:
        queued = [asyncio.create_task(storage.log.append(d)) for d in deliveries]
        await asyncio.sleep(0)
    assert sorted(r.seq for r in await asyncio.gather(*queued)) == list(range(1, 301))
    assert await query(pg_url, "SELECT count(*) FROM deliveries") == [(300,)]


async def test_a_holder_that_closes_hands_the_lease_over_before_it_would_expire(
    pg_url: PostgresUrl,
) -> None:
    async with opened(pg_url) as standby:
        async with opened(pg_url) as holder:
            await holder.log.append(sample_deliveries()[0])
            await fold_all(holder.projector)
            [(held_until,)] = await query(pg_url, "SELECT lease_until FROM projector_lease")

        async def took_over() -> bool:
            await standby.projector.fold_new(500)
            return standby.projector.active

        assert await eventually(took_over)
        [(claimed_at, epoch)] = await query(
            pg_url, "SELECT lease_until - interval '6 s', epoch FROM projector_lease"
        )
    assert epoch == 2
    assert claimed_at < held_until  # not left to run out


async def test_a_fold_in_another_process_tells_this_one_its_read_models_changed(
    pg_url: PostgresUrl,
) -> None:
    told: list[bool] = []
    async with (
        opened(pg_url) as folder,
        opened(pg_url, on_read_models_changed=lambda: told.append(True)) as watcher,
    ):
        await watcher.projector.wait_for_appends(0.05)  # starts listening
        await folder.log.append(sample_deliveries()[0])
        await fold_all(folder.projector)

        async def heard() -> bool:
            await watcher.projector.wait_for_appends(0.05)
            return bool(told)

        assert await eventually(heard)


async def test_exactly_one_of_two_services_reports_folding_in_its_metrics(
    pg_url: PostgresUrl,
) -> None:
    """/metrics' projector_folding is 1 in the lease holder and 0 in the other process."""
    settings = load_settings(db=pg_url.url, signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN)
    async with (
        TestClient(TestServer(build_app(settings))) as first,
        TestClient(TestServer(build_app(settings))) as second,
    ):

        async def folding() -> list[float]:
            values = []
            for client in (first, second):
                text = await (await client.get("/metrics", headers=AUTH)).text()
                (line,) = [row for row in text.splitlines() if row.startswith("projector_folding ")]
                values.append(float(line.split()[1]))
            return values

        # Whoever claims the lease first (within a second or two of start) folds.
        for _ in range(100):  # bounded: 10 s
            if sum(await folding()) == 1:
                break
            await asyncio.sleep(0.1)
        assert sorted(await folding()) == [0.0, 1.0]

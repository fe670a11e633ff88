"""Rebuild on PostgreSQL: appends go on throughout, the swap equals live, start-up rebuilds once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from projector.storage.location import PostgresUrl
from projector.storage.port import LogSchemaError, RebuildSuperseded
from projector.storage.postgres import PostgresStorage, rebuild, schema
from projector.storage.postgres.connect import connect
from tests.postgres_support import fold_all, opened, positions, query, read_models
from tests.storage_support import NAMES, rebuilt, sample_deliveries


async def test_a_rebuild_swaps_in_while_appends_keep_committing_and_equals_live(
    pg_url: PostgresUrl, tmp_path: Path
) -> None:
    deliveries = sample_deliveries()
    early, late = deliveries[:200], deliveries[200:]
    async with opened(pg_url) as storage:
        await asyncio.gather(*(storage.log.append(d) for d in early))
        await fold_all(storage.projector)
        committed: list[int] = []

        async def keep_appending() -> None:
            for delivery in late:  # one request after another, as a sender would
                committed.append((await storage.log.append(delivery)).seq)

        appending = asyncio.create_task(keep_appending())
        conn = await connect(pg_url)
        try:
            before = len(committed)
            # Small chunks: the fill takes many transactions, between which appends commit.
            position = await rebuild.rebuild(conn, chunk=10)
            during = len(committed) - before
        finally:
            await conn.close()
        await appending
        await fold_all(storage.projector)
        live = await read_models(pg_url)
    assert during > 0  # deliveries were acknowledged while the rebuild ran
    assert not appending.cancelled()
    assert 200 < position <= len(deliveries)  # the swap folded what came during the fill
    assert committed == list(range(201, len(deliveries) + 1))
    assert await positions(pg_url) == dict.fromkeys(NAMES, len(deliveries))
    assert await query(pg_url, "SELECT DISTINCT generation FROM projections") == [(2,)]
    assert live == rebuilt(tmp_path / "fresh.sqlite3", deliveries)


async def test_processes_starting_together_on_stale_projections_rebuild_them_once(
    pg_url: PostgresUrl, tmp_path: Path
) -> None:
    deliveries = sample_deliveries()[:150]
    async with opened(pg_url) as storage:
        await asyncio.gather(*(storage.log.append(d) for d in deliveries))
        await fold_all(storage.projector)
    # As after an upgrade that changed a fold: every projection's version is out of date.
    await query(pg_url, "UPDATE projections SET version = 0")
    starting = [PostgresStorage(pg_url, max_pending=10) for _ in range(3)]
    try:
        await asyncio.gather(*(storage.open() for storage in starting))
    finally:
        await asyncio.gather(*(storage.close() for storage in starting))
    assert await query(pg_url, "SELECT generation FROM rebuilds ORDER BY generation") == [
        (1,),  # the first start on the empty database
        (2,),  # one rebuild for the three processes
    ]
    assert await query(pg_url, "SELECT DISTINCT version > 0, position FROM projections") == [
        (True, len(deliveries))
    ]
    assert await read_models(pg_url) == rebuilt(tmp_path / "fresh.sqlite3", deliveries)


async def test_processes_starting_together_on_an_empty_database_create_it_once(
    pg_url: PostgresUrl,
) -> None:
    starting = [PostgresStorage(pg_url, max_pending=10) for _ in range(4)]
    try:
        await asyncio.gather(*(storage.open() for storage in starting))
    finally:
        await asyncio.gather(*(storage.close() for storage in starting))
    assert await query(pg_url, "SELECT version FROM projector_schema") == [(schema.SCHEMA_VERSION,)]
    assert await query(pg_url, "SELECT seq FROM log_head") == [(0,)]
    assert await query(pg_url, "SELECT generation FROM rebuilds") == [(1,)]


async def test_an_older_rebuild_stops_when_a_newer_one_claims(pg_url: PostgresUrl) -> None:
    async with opened(pg_url) as storage:
        await asyncio.gather(*(storage.log.append(d) for d in sample_deliveries()[:30]))
    older, newer = await connect(pg_url), await connect(pg_url)
    try:
        generation, _ = await rebuild._claim(older)
        assert await rebuild.rebuild(newer) == 30
        with pytest.raises(RebuildSuperseded, match=f"rebuild {generation} stops"):
            await rebuild._check_claim(older, generation)
    finally:
        await older.close()
        await newer.close()
    assert await query(pg_url, "SELECT DISTINCT generation FROM projections") == [(3,)]


async def test_a_database_of_a_newer_release_is_refused_with_what_to_do(
    pg_url: PostgresUrl,
) -> None:
    async with opened(pg_url):
        pass
    await query(pg_url, "UPDATE projector_schema SET version = 99")
    with pytest.raises(LogSchemaError, match="upgrade refold-projector"):
        async with opened(pg_url):
            pass


async def test_a_database_holding_another_applications_tables_is_refused(
    pg_url: PostgresUrl,
) -> None:
    await query(pg_url, "CREATE TABLE deliveries (id serial PRIMARY KEY, parcel text)")
    with pytest.raises(LogSchemaError, match="a database of its own"):
        async with opened(pg_url):
            pass
    assert await query(pg_url, "SELECT to_regclass('log_head') IS NULL") == [(True,)]

"""PostgreSQL maintenance: verify catches tampering; rows copy between logs, chain intact."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from projector import integrity
from projector.integrity import LogNotIntact
from projector.storage.location import PostgresUrl
from projector.storage.postgres import open_maintenance
from projector.storage.postgres.appends import stored_rows_for_postgres
from projector.storage.postgres.maintenance import PostgresMaintenance
from projector.storage.rows import RowsDoNotContinue, StoredRow
from projector.storage.sqlite import chain, log
from tests.postgres_support import opened, positions, query, raw
from tests.storage_support import NAMES, ODD_BODY, new_delivery, sample_deliveries


async def _populate(url: PostgresUrl, count: int = 120) -> None:
    deliveries = [*sample_deliveries()[: count - 1], new_delivery(ODD_BODY, "live")]
    async with opened(url) as storage:
        await asyncio.gather(*(storage.log.append(d) for d in deliveries))


async def _copy(source: PostgresMaintenance, destination: PostgresMaintenance) -> None:
    after = 0
    while rows := await source.stored_rows(after, 50):
        await destination.append_stored(rows)
        after = rows[-1].seq


# The guard as the schema creates it, for a superuser to put back after editing a row.
RESTORE_GUARD = (
    "CREATE TRIGGER deliveries_no_update_or_delete BEFORE UPDATE OR DELETE ON deliveries"
    " FOR EACH ROW EXECUTE FUNCTION deliveries_append_only()"
)


async def test_verify_walks_an_intact_log_and_names_the_server_and_rows(
    pg_url: PostgresUrl,
) -> None:
    await _populate(pg_url)
    maintenance = await open_maintenance(pg_url)
    try:
        verification = await maintenance.verify()
        report, lines = verification.chain, list(verification.checks)
        head = await maintenance.head()
    finally:
        await maintenance.close()
    assert report.intact
    assert (report.rows, report.head_seq, report.head_hash) == (120, *head)
    assert head[0] == 120
    assert lines[0].startswith(f"postgresql: {pg_url}, server 15")
    assert lines[0].endswith(", 120 rows")
    assert lines[1] == "postgresql append-only triggers: in place"


async def test_the_log_refuses_update_delete_and_truncate(pg_url: PostgresUrl) -> None:
    await _populate(pg_url, 3)
    async with raw(pg_url) as conn:
        for statement in (
            "UPDATE deliveries SET body = 'x' WHERE seq = 2",
            "DELETE FROM deliveries WHERE seq = 3",
            "TRUNCATE deliveries",
        ):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                await conn.execute(statement)
    assert await query(pg_url, "SELECT count(*) FROM deliveries") == [(3,)]


async def test_verify_finds_a_body_altered_behind_the_guards(pg_url: PostgresUrl) -> None:
    await _populate(pg_url)
    async with raw(pg_url) as conn:  # a superuser drops the guard, edits, puts it back
        await conn.execute("DROP TRIGGER deliveries_no_update_or_delete ON deliveries")
        await conn.execute("UPDATE deliveries SET body = body || 'x'::bytea WHERE seq = 57")
        await conn.execute(RESTORE_GUARD)
    maintenance = await open_maintenance(pg_url)
    try:
        verification = await maintenance.verify()
        report, lines = verification.chain, list(verification.checks)
    finally:
        await maintenance.close()
    assert not report.intact
    assert report.broken_at == 57
    assert report.problem is not None
    assert "altered" in report.problem
    assert lines[1] == "postgresql append-only triggers: in place"


async def test_verify_and_the_projector_stop_at_a_gap(pg_url: PostgresUrl) -> None:
    await _populate(pg_url, 10)
    source = await open_maintenance(pg_url)
    try:
        [row] = await source.stored_rows(9, 1)
        moved = StoredRow((15, *row.content[1:]), row.row_hash)
        async with raw(pg_url) as conn:  # slipped in past the head, by hand
            await conn.execute(
                f"INSERT INTO deliveries VALUES ({', '.join(['%s'] * 16)})",
                stored_rows_for_postgres([moved])[0],
            )
        report = (await source.verify()).chain
    finally:
        await source.close()
    assert report.intact is False
    assert report.broken_at == 11
    async with opened(pg_url) as storage:
        with pytest.raises(LogNotIntact, match="no row with seq 11"):
            await storage.projector.fold_new(500)
    assert await positions(pg_url) == dict.fromkeys(NAMES, 0)  # nothing past the gap, nor before


async def test_rows_copied_to_another_postgresql_database_keep_the_chain(
    pg_url: PostgresUrl, other_url: PostgresUrl
) -> None:
    await _populate(pg_url)
    source = await open_maintenance(pg_url)
    destination = await open_maintenance(other_url, create=True)
    try:
        await _copy(source, destination)
        assert await destination.head() == await source.head()
        report = (await destination.verify()).chain
        assert await destination.stored_rows(0, 500) == await source.stored_rows(0, 500)
    finally:
        await source.close()
        await destination.close()
    assert report.intact
    assert report.rows == 120
    assert await query(other_url, "SELECT seq FROM log_head") == [(120,)]


async def test_rows_that_do_not_continue_the_chain_are_refused_whole(
    pg_url: PostgresUrl, other_url: PostgresUrl
) -> None:
    await _populate(pg_url, 10)
    source = await open_maintenance(pg_url)
    destination = await open_maintenance(other_url, create=True)
    try:
        rows = await source.stored_rows(0, 10)
        with pytest.raises(RowsDoNotContinue, match="next seq is 1"):
            await destination.append_stored(rows[3:])
        altered = replace(rows[4], content=(*rows[4].content[:6], b"{}", *rows[4].content[7:]))
        with pytest.raises(RowsDoNotContinue, match="seq 5 carries hash"):
            await destination.append_stored([*rows[:4], altered, *rows[5:]])
        assert await destination.head() == (0, integrity.GENESIS_HASH)
    finally:
        await source.close()
        await destination.close()


async def test_a_sqlite_log_copied_to_postgresql_has_the_same_head_hash(
    pg_url: PostgresUrl, tmp_path: Path
) -> None:
    conn = log.connect(tmp_path / "log.sqlite3")
    log.migrate(conn)
    deliveries = [*sample_deliveries()[:200], new_delivery(ODD_BODY, "live")]
    log.append_batch(conn, deliveries)
    rows = [StoredRow(tuple(content), stored) for _, content, stored in chain.hashed_rows(conn)]
    sqlite_head = chain.head_hash(conn)
    conn.close()
    destination = await open_maintenance(pg_url, create=True)
    try:
        for start in range(0, len(rows), 64):
            await destination.append_stored(rows[start : start + 64])
        assert await destination.head() == sqlite_head
        report = (await destination.verify()).chain
        assert await destination.stored_rows(0, 1000) == rows
    finally:
        await destination.close()
    assert report.intact
    assert report.rows == len(deliveries)

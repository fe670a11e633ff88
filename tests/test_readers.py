"""Read-only connections, and banner reads that arrive together sharing one query."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from projector.storage.queries import SQLITE, SqlReads
from projector.storage.sqlite import log, readers
from projector.storage.sqlite.readers import ReaderPool
from tests.storage_support import direct, new_delivery


async def test_reader_connections_cannot_write(populated: Path) -> None:
    """Every pooled connection is read-only: writes raise and the log is unchanged."""
    head = direct(populated, "SELECT count(*) FROM deliveries")
    async with ReaderPool(populated, size=2) as pool:
        for _ in range(2):
            async with pool.connection() as conn:
                with pytest.raises(sqlite3.OperationalError, match="readonly"):
                    await conn.execute("INSERT INTO projections VALUES ('x', 1, 0, 0)")
                with pytest.raises(sqlite3.OperationalError, match="readonly"):
                    await conn.execute("CREATE TABLE scratch (x)")
    assert direct(populated, "SELECT count(*) FROM deliveries") == head
    assert direct(populated, "SELECT count(*) FROM projections WHERE name = 'x'") == [(0,)]


async def test_readers_see_deliveries_committed_after_they_opened(populated: Path) -> None:
    """A reader is not stuck on an old snapshot: a later commit shows in its next query."""
    async with ReaderPool(populated) as pool:
        reads = SqlReads(pool.fetch, SQLITE)
        before = (await reads.projection_states()).log_head
        writer = log.connect(populated)
        log.append_batch(writer, [new_delivery(b"[1]", "test")])
        writer.close()
        assert (await reads.projection_states()).log_head == before + 1


async def test_banner_reads_waiting_together_share_queries_and_each_gets_its_own_rows(
    account_reads: SqlReads, populated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reads gathered at once (repeats, unknown accounts, both environments) go to SQLite in
    shared queries, and every read answers exactly what its own query would."""
    keys = direct(populated, "SELECT DISTINCT environment, linked_account_id FROM connections")
    keys += [("live", "nobody-at-all"), ("test", "nobody-either")]
    wanted = [*keys, *keys[:5]]  # some accounts asked for twice at the same time
    trips: list[str] = []
    real_rows = readers.fetch_rows

    async def counted(conn: aiosqlite.Connection, sql: str, *params: Any) -> list[Any]:
        trips.append(sql)
        return await real_rows(conn, sql, *params)

    monkeypatch.setattr(readers, "fetch_rows", counted)
    answers = await asyncio.gather(
        *(account_reads.account_connections(env, account) for env, account in wanted)
    )
    assert len(trips) == 1  # all asked in one loop turn: one query for all of them
    for (environment, account), answer in zip(wanted, answers, strict=True):
        rows = direct(
            populated,
            "SELECT slug, status, status_since, type, first_seen, last_seen FROM connections"
            " WHERE environment = ? AND linked_account_id = ? ORDER BY slug",
            environment,
            account,
        )
        assert (answer.environment, answer.linked_account_id) == (environment, account)
        assert [
            (c.slug, c.status, c.status_since, c.type, c.first_seen, c.last_event_at)
            for c in answer.connections
        ] == rows


async def test_a_failed_shared_query_fails_every_read_waiting_on_it(
    account_reads: SqlReads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No read is left hanging when the query it shares fails: each gets the error."""

    async def failing(conn: aiosqlite.Connection, sql: str, *params: Any) -> list[Any]:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(readers, "fetch_rows", failing)
    outcomes = await asyncio.wait_for(
        asyncio.gather(
            *(account_reads.account_connections("live", f"a{i}") for i in range(5)),
            return_exceptions=True,
        ),
        timeout=5,
    )
    assert all(isinstance(o, sqlite3.OperationalError) for o in outcomes)

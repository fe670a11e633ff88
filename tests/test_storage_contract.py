"""The storage contract on SQLite and on PostgreSQL, and the two engines agreeing row for row."""

from __future__ import annotations

import sqlite3
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

from projector.storage.location import Location, PostgresUrl
from tests.contract_support import (
    append_folding,
    every_answer,
    fold_all,
    maintaining,
    serving,
    stream,
)
from tests.postgres_support import fresh_database, raw
from tests.storage_contract import StorageContract


class TestSqliteStorage(StorageContract):
    def fresh_location(self, stack: ExitStack, tmp_path: Path) -> Location:
        return tmp_path / f"contract-{uuid.uuid4().hex[:8]}.sqlite3"

    async def alter_body(self, location: Location, seq: int) -> None:
        assert isinstance(location, Path)
        conn = sqlite3.connect(location)
        try:
            (guard,) = conn.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'deliveries_no_update'"
            ).fetchone()
            conn.execute("DROP TRIGGER deliveries_no_update")
            conn.execute("UPDATE deliveries SET body = body || x'78' WHERE seq = ?", (seq,))
            conn.execute(guard)  # put back as it was: only the hash chain can tell
            conn.commit()
        finally:
            conn.close()


class TestPostgresStorage(StorageContract):
    def fresh_location(self, stack: ExitStack, tmp_path: Path) -> Location:
        return stack.enter_context(fresh_database())

    async def alter_body(self, location: Location, seq: int) -> None:
        assert isinstance(location, PostgresUrl)
        async with raw(location) as conn:  # a superuser switches the guard off, then on
            await conn.execute(
                "ALTER TABLE deliveries DISABLE TRIGGER deliveries_no_update_or_delete"
            )
            await conn.execute(
                "UPDATE deliveries SET body = body || 'x'::bytea WHERE seq = %s", (seq,)
            )
            await conn.execute(
                "ALTER TABLE deliveries ENABLE TRIGGER deliveries_no_update_or_delete"
            )


async def test_the_same_deliveries_give_the_same_rows_head_hash_and_answers_on_both_engines(
    tmp_path: Path, pg_url: PostgresUrl
) -> None:
    deliveries = stream()
    found = []
    for location in (tmp_path / "log.sqlite3", pg_url):
        async with serving(location) as storage:
            await append_folding(storage, deliveries)
            answers = await every_answer(storage.reads, deliveries)
        async with maintaining(location) as maintenance:
            verification = await maintenance.verify()
            found.append(
                (await maintenance.head(), await maintenance.stored_rows(0, 1000), answers)
            )
        assert verification.intact, location
    (sqlite_head, sqlite_rows, sqlite_answers), (pg_head, pg_rows, pg_answers) = found
    assert pg_head == sqlite_head
    assert pg_head[0] == len(deliveries)
    assert pg_rows == sqlite_rows
    assert pg_answers == sqlite_answers


@pytest.mark.parametrize("to_postgresql", [True, False], ids=["to postgresql", "to sqlite"])
async def test_a_log_copied_to_the_other_engine_keeps_its_chain_and_answers(
    tmp_path: Path, pg_url: PostgresUrl, to_postgresql: bool
) -> None:
    sqlite_path: Location = tmp_path / "log.sqlite3"
    source, copy = (sqlite_path, pg_url) if to_postgresql else (pg_url, sqlite_path)
    deliveries = stream()
    async with serving(source) as storage:
        await append_folding(storage, deliveries)
        expected = await every_answer(storage.reads, deliveries)
    async with maintaining(source) as origin, maintaining(copy, create=True) as destination:
        after = 0
        while rows := await origin.stored_rows(after, 128):
            await destination.append_stored(rows)
            after = rows[-1].seq
        assert await destination.head() == await origin.head()
        verification = await destination.verify()
    assert verification.intact
    assert verification.chain.rows == len(deliveries)
    async with serving(copy) as storage:
        await fold_all(storage.projector)
        assert await every_answer(storage.reads, deliveries) == expected

"""The PostgreSQL event log: group commit, duplicates, the hash chain, serialised appends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from projector.integrity import HASHED_COLUMNS
from projector.storage.compact import hex_of
from projector.storage.location import PostgresUrl
from projector.storage.port import StorageUnavailable
from projector.storage.postgres import PostgresStorage
from projector.storage.postgres.appends import append_rows
from projector.storage.rows import logical_form, row_content
from projector.storage.sqlite import log
from projector.storage.sqlite.chain import head_hash
from tests.postgres_support import eventually, opened, query, raw
from tests.storage_support import ODD_BODY, new_delivery, sample_deliveries
from tests.support import free_port


async def test_appends_get_seqs_from_one_and_rows_are_stored_as_given(pg_url: PostgresUrl) -> None:
    deliveries = sample_deliveries()[:40]
    async with opened(pg_url) as storage:
        appended = [await storage.log.append(d) for d in deliveries]
    assert [a.seq for a in appended] == list(range(1, 41))
    columns = ", ".join(HASHED_COLUMNS)
    stored = await query(pg_url, f"SELECT {columns}, row_hash FROM deliveries ORDER BY seq")
    expected = [
        row_content(a.seq, d, a.duplicate_of) for a, d in zip(appended, deliveries, strict=True)
    ]
    # Stored compact (the digests as 32 bytes, the headers compact), read back exactly.
    assert [logical_form(row).content for row in stored] == expected
    assert {(len(row[12]), len(row[15])) for row in stored} == {(32, 32)}


async def test_a_repeated_event_is_stored_again_as_a_duplicate_of_its_first_seq(
    pg_url: PostgresUrl,
) -> None:
    first, other = sample_deliveries()[:2]
    async with opened(pg_url) as storage:
        results = [await storage.log.append(d) for d in (first, other, first, first)]
    assert [(r.seq, r.duplicate_of) for r in results] == [(1, None), (2, None), (3, 1), (4, 1)]
    assert await query(pg_url, "SELECT seq, duplicate_of FROM deliveries ORDER BY seq") == [
        (1, None),
        (2, None),
        (3, 1),
        (4, 1),
    ]


async def test_an_undecodable_body_is_stored_flagged(pg_url: PostgresUrl) -> None:
    async with opened(pg_url) as storage:
        appended = await storage.log.append(new_delivery(ODD_BODY, "live"))
    rows = await query(pg_url, "SELECT body, flags FROM deliveries WHERE seq = %s", appended.seq)
    assert [(bytes(body), flags) for body, flags in rows] == [(ODD_BODY, '["not_json"]')]


async def test_concurrent_appends_share_one_transaction_per_batch(pg_url: PostgresUrl) -> None:
    deliveries = sample_deliveries()[:120]
    batches: list[int] = []
    async with opened(pg_url) as storage:
        storage.log.on_batch = batches.append
        results = await asyncio.gather(*(storage.log.append(d) for d in deliveries))
    assert sorted(r.seq for r in results) == list(range(1, 121))
    assert sum(batches) == 120
    assert len(batches) < 120  # some appends were committed together
    # Each batch is one transaction: its rows carry the same inserting transaction id.
    transactions = await query(pg_url, "SELECT count(DISTINCT xmin::text) FROM deliveries")
    assert transactions == [(len(batches),)]


async def test_the_same_deliveries_chain_to_the_same_head_hash_as_on_sqlite(
    pg_url: PostgresUrl, tmp_path: Path
) -> None:
    deliveries = [*sample_deliveries(), new_delivery(ODD_BODY, "live"), sample_deliveries()[0]]
    conn = log.connect(tmp_path / "log.sqlite3")
    log.migrate(conn)
    for start in range(0, len(deliveries), 37):
        log.append_batch(conn, deliveries[start : start + 37])
    sqlite_head = head_hash(conn)
    conn.close()
    async with opened(pg_url) as storage:
        await asyncio.gather(*(storage.log.append(d) for d in deliveries))
    head = await query(pg_url, "SELECT seq, row_hash FROM deliveries ORDER BY seq DESC LIMIT 1")
    assert [(seq, hex_of(stored)) for seq, stored in head] == [sqlite_head]
    assert await query(pg_url, "SELECT seq, row_hash FROM log_head") == [sqlite_head]


async def test_appends_of_two_processes_wait_for_a_held_append_and_commit_in_seq_order(
    pg_url: PostgresUrl,
) -> None:
    """While one append transaction is open, the others wait; a follower never skips a seq."""
    deliveries = sample_deliveries()[:61]
    seen: list[int] = []

    async def follow() -> None:
        async with raw(pg_url) as conn:
            while len(seen) < len(deliveries):
                after = seen[-1] if seen else 0
                cur = await conn.execute(
                    "SELECT seq FROM deliveries WHERE seq > %s ORDER BY seq", (after,)
                )
                seen.extend(seq for (seq,) in await cur.fetchall())
                await asyncio.sleep(0.001)

    async def waiting_on_the_head() -> bool:
        rows = await query(
            pg_url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE '%%log_head FOR UPDATE%%'",
        )
        return rows == [(2,)]

    async with opened(pg_url) as first, opened(pg_url) as second, raw(pg_url) as holder:
        follower = asyncio.create_task(follow())
        await holder.execute("BEGIN")
        held = await append_rows(holder, deliveries[:1])  # seq 1, not committed yet
        appends = [
            asyncio.create_task((first, second)[i % 2].log.append(d))
            for i, d in enumerate(deliveries[1:])
        ]
        assert await eventually(waiting_on_the_head)  # one batch of each process waits
        assert not any(task.done() for task in appends)
        assert seen == []  # seq 1 is not visible before its commit
        await holder.execute("COMMIT")
        results = await asyncio.gather(*appends)
        async with asyncio.timeout(20):
            await follower
    assert held[0].seq == 1
    assert sorted(r.seq for r in results) == list(range(2, 62))
    assert seen == list(range(1, 62))  # every seq, once, in order: none committed late


async def test_appends_fail_while_the_connection_is_cut_and_recover_by_themselves(
    pg_url: PostgresUrl,
) -> None:
    first, second, third = sample_deliveries()[:3]
    async with opened(pg_url) as storage:
        await storage.log.append(first)
        await query(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'refold-projector'",
        )
        with pytest.raises(StorageUnavailable, match="appending to the event log"):
            await storage.log.append(second)
        assert storage.log.last_commit is not None
        assert not storage.log.last_commit.succeeded
        recovered = await storage.log.append(third)
        await storage.log.probe_write()
    assert recovered.seq == 2
    assert storage.log.last_commit is not None
    assert storage.log.last_commit.succeeded
    assert await query(pg_url, "SELECT max(seq), count(*) FROM deliveries") == [(2, 2)]


async def test_an_unreachable_server_is_storage_unavailable_and_never_shows_the_password() -> None:
    url = PostgresUrl(f"postgresql://refold:s3cret-pw@127.0.0.1:{free_port()}/nowhere")
    storage = PostgresStorage(url, max_pending=10)
    with pytest.raises(StorageUnavailable) as raised:
        await storage.open()
    message = str(raised.value)
    assert "s3cret-pw" not in message
    assert "refold:***@127.0.0.1" in message
    assert "check that the server is running" in message


async def test_the_probe_appends_nothing(pg_url: PostgresUrl) -> None:
    async with opened(pg_url) as storage:
        await storage.log.probe_write()
        appended = await storage.log.append(sample_deliveries()[0])
    assert appended.seq == 1
    assert await query(pg_url, "SELECT count(*) FROM deliveries") == [(1,)]


async def test_an_append_behind_a_stuck_transaction_fails_after_the_lock_timeout_then_goes_on(
    pg_url: PostgresUrl,
) -> None:
    first, second = sample_deliveries()[:2]
    async with opened(pg_url) as storage, raw(pg_url) as stuck:
        await stuck.execute("BEGIN")
        await stuck.execute("SELECT * FROM log_head FOR UPDATE")  # and never commits
        with pytest.raises(StorageUnavailable, match=r"lock timeout.*pg_stat_activity"):
            await storage.log.append(first)
        await stuck.execute("ROLLBACK")
        appended = await storage.log.append(second)
    assert appended.seq == 1

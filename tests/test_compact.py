"""The log's compact stored forms: exact round trips, and migrating old logs to them."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projector.events import format_instant
from projector.integrity import GENESIS_HASH, HASHED_COLUMNS, row_hash
from projector.storage import compact
from projector.storage.location import PostgresUrl
from projector.storage.postgres import open_maintenance, schema
from projector.storage.postgres.appends import FIRST_SEQS
from projector.storage.queries import SQLITE, SqlReads
from projector.storage.rows import logical_form, number_batch
from projector.storage.sqlite import chain, log, projection, replay
from projector.storage.sqlite.adapter import SqliteMaintenance
from projector.storage.sqlite.readers import ReaderPool
from tests.contract_support import every_answer
from tests.postgres_support import opened, raw
from tests.storage_support import (
    ODD_BODY,
    append_as_version_3,
    logical_rows,
    new_delivery,
    sample_deliveries,
)

SORTED_JSON = json.JSONEncoder(sort_keys=True)
HEADERS = HASHED_COLUMNS.index("headers")
# Header values as aiohttp hands them over: any text, lone surrogates included.
header_values = st.one_of(
    st.text(),
    st.sampled_from(["application/json", "application/json; charset=utf-8"]),
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.binary(min_size=32, max_size=32).map(lambda b: b.hex().upper()),
)
header_names = st.one_of(st.text(), st.sampled_from(["content-type", "x-cobalt-signature"]))


@given(st.dictionaries(header_names, header_values, max_size=5))
def test_the_compact_form_of_any_headers_reads_back_as_their_sorted_json(
    headers: dict[str, str],
) -> None:
    text = SORTED_JSON.encode(headers)
    assert compact.headers_of(compact.compact_headers_of(headers)) == text
    assert compact.headers_of(compact.compact_headers(text)) == text
    stored = compact.headers_as_bytes(compact.compact_headers(text))
    assert compact.headers_of(stored) == text


@given(st.text())
def test_any_headers_text_reads_back_exactly_in_whichever_form_it_is_stored(text: str) -> None:
    stored = compact.compact_headers(text)
    assert compact.headers_of(stored) == text
    assert compact.headers_of(compact.headers_as_bytes(stored)) == text


def test_the_receivers_headers_take_37_bytes_instead_of_126() -> None:
    headers = {"content-type": "application/json", "x-cobalt-signature": "ab" * 32}
    assert len(SORTED_JSON.encode(headers)) == 126
    assert len(compact.compact_headers_of(headers)) == 37


def test_stored_headers_that_do_not_decode_read_as_text_no_headers_have() -> None:
    """An altered BLOB never raises: its text differs from any headers', so the chain breaks."""
    for raw_value in (b"\x01\x03\x01\xab", b"\x07", b"\x01\x00\x05ab"):
        assert compact.headers_of(raw_value).startswith("undecodable stored headers: ")


@given(st.datetimes(datetime(1000, 1, 1), timezones=st.just(UTC)))
def test_received_at_as_written_is_stored_as_an_integer_that_reads_back_exactly(
    moment: datetime,
) -> None:
    text = format_instant(moment)
    stored = compact.compact_instant(text)
    assert isinstance(stored, int)
    assert compact.instant_of(stored) == text


@given(st.text())
def test_any_other_received_at_text_is_kept_as_it_is(text: str) -> None:
    assert compact.instant_of(compact.compact_instant(text)) == text


@given(st.text(alphabet="0123456789abcdefABCDEF", min_size=62, max_size=66))
def test_only_a_lowercase_sha256_hex_digest_is_stored_as_32_bytes(text: str) -> None:
    stored = compact.compact_hex(text)
    assert compact.hex_of(stored) == text
    assert isinstance(stored, bytes) == (len(text) == 64 and text == text.lower())


# --- migrating a log written by refold-projector up to log schema version 3 -------------------


def odd_row(seq: int, previous: str) -> tuple[Any, ...]:
    """A row whose headers text is not its dict's sorted JSON: it must be kept as it is."""
    rows, _, _ = number_batch(seq - 1, previous, [new_delivery(ODD_BODY, "live")], {})
    content = list(logical_form(rows[0]).content)
    content[HEADERS] = '{"x-cobalt-signature": "AB", "content-type": "text/plain"}'
    return (*content, row_hash(previous, content))


def version_3_log(path: Path) -> sqlite3.Connection:
    """A log as refold-projector left it at log schema version 3, folded, with an odd row."""
    conn = log.connect(path)
    with log.transaction(conn):
        for migration in log.MIGRATIONS[:3]:
            migration(conn)
        conn.execute("PRAGMA user_version = 3")
    append_as_version_3(conn, sample_deliveries())
    seq, previous = chain.head_hash(conn)
    columns = ", ".join((*HASHED_COLUMNS, "row_hash"))
    conn.execute(
        f"INSERT INTO deliveries ({columns}) VALUES ({', '.join('?' * 16)})",
        odd_row(seq + 1, previous),
    )
    append_as_version_3(conn, sample_deliveries()[:5])  # repeats, after the odd row
    projection.prepare(conn)
    replay.rebuild(conn)
    return conn


async def answers(path: Path) -> dict[str, Any]:
    deliveries = [*sample_deliveries(), new_delivery(ODD_BODY, "live"), *sample_deliveries()[:5]]
    async with ReaderPool(path) as pool:
        reads = SqlReads(pool.fetch, SQLITE)
        found = await every_answer(reads, deliveries)
        found["projections"] = (await reads.projection_states()).model_dump()
        return found


async def test_a_version_3_sqlite_log_migrates_to_compact_rows_reading_back_the_same(
    db_path: Path,
) -> None:
    conn = version_3_log(db_path)
    before, head, expected = logical_rows(conn), chain.head_hash(conn), await answers(db_path)
    assert log.migrate(conn) == log.LOG_SCHEMA_VERSION == 4
    assert logical_rows(conn) == before
    assert chain.head_hash(conn) == head
    assert await answers(db_path) == expected
    kinds = conn.execute(
        "SELECT typeof(received_at), typeof(headers), typeof(event_key), typeof(row_hash), count(*)"
        " FROM deliveries GROUP BY 1, 2, 3, 4"
    ).fetchall()
    # Every row compact but the odd row's headers, kept as their text.
    assert sorted(kinds) == [
        ("integer", "blob", "blob", "blob", len(before) - 1),
        ("integer", "text", "blob", "blob", 1),
    ]
    conn.close()
    maintenance = SqliteMaintenance(db_path, readonly=False)
    try:
        verification = await maintenance.verify()
        assert verification.intact
        assert verification.checks_passed, verification.checks
        assert [(*r.content, r.row_hash) for r in await maintenance.stored_rows(0, 999)] == before
    finally:
        await maintenance.close()


def test_the_migration_refuses_a_row_below_the_chain_and_changes_nothing(db_path: Path) -> None:
    conn = version_3_log(db_path)
    for (trigger,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("PRAGMA ignore_check_constraints = ON")
    conn.execute(
        "INSERT INTO deliveries SELECT -3, received_at, environment, key_id, signed_as, headers,"
        " body, event, kind, linked_account_id, slug, instance_id, event_key, flags,"
        " duplicate_of, row_hash FROM deliveries WHERE seq = 1"
    )
    conn.execute("PRAGMA ignore_check_constraints = OFF")
    with pytest.raises(log.LogSchemaError, match="seq -3, outside the chain"):
        log.migrate(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3


# --- PostgreSQL: schema version 2 to 3 --------------------------------------------------------


async def version_2_database(url: PostgresUrl, rows: list[tuple[Any, ...]]) -> None:
    """A database as refold-projector left it at schema version 2, holding `rows` as text."""
    async with raw(url) as conn, conn.transaction():
        for migration in schema.MIGRATIONS[:2]:
            await migration(conn)
        await conn.execute("UPDATE projector_schema SET version = 2")
        columns = ", ".join((*HASHED_COLUMNS, "row_hash"))
        async with conn.cursor() as cur:
            await cur.executemany(
                f"INSERT INTO deliveries ({columns}) VALUES ({', '.join(['%s'] * 16)})", rows
            )
        await conn.execute(
            "UPDATE log_head SET seq = %s, row_hash = %s", (rows[-1][0], rows[-1][-1])
        )


async def test_a_version_2_postgresql_log_migrates_to_compact_rows_reading_back_the_same(
    pg_url: PostgresUrl, tmp_path: Path
) -> None:
    conn = version_3_log(tmp_path / "source.sqlite3")
    rows = logical_rows(conn)
    conn.close()
    await version_2_database(pg_url, rows)
    deliveries = [*sample_deliveries(), new_delivery(ODD_BODY, "live"), *sample_deliveries()[:5]]
    async with opened(pg_url) as storage:  # start-up migrates
        migrated = await every_answer(storage.reads, deliveries)
    maintenance = await open_maintenance(pg_url)
    try:
        assert [(*r.content, r.row_hash) for r in await maintenance.stored_rows(0, 999)] == rows
        assert await maintenance.head() == (rows[-1][0], rows[-1][-1])
        assert (await maintenance.verify()).intact
    finally:
        await maintenance.close()
    async with raw(pg_url) as check:
        cur = await check.execute("SELECT version FROM projector_schema")
        assert await cur.fetchone() == (3,)
        cur = await check.execute(
            "SELECT count(*) FROM deliveries WHERE get_byte(headers, 0) = %s",
            (compact.HEADERS_TEXT,),
        )
        assert await cur.fetchone() == (1,)  # the odd row's headers, kept as their text
    # The SQLite log of the same rows (migrated too) answers alike.
    expected = await answers(tmp_path / "source.sqlite3")
    expected.pop("projections")
    assert migrated == expected


async def test_the_postgresql_migration_refuses_a_key_that_is_not_a_hex_digest(
    pg_url: PostgresUrl,
) -> None:
    rows, _, _ = number_batch(0, GENESIS_HASH, sample_deliveries()[:3], {})
    logical = [(*r.content, r.row_hash) for r in map(logical_form, rows)]
    logical[1] = (*logical[1][:12], logical[1][12].upper(), *logical[1][13:])
    await version_2_database(pg_url, logical)
    with pytest.raises(Exception, match="seq 2 has an event_key or row_hash"):
        async with opened(pg_url):
            pass
    async with raw(pg_url) as check:
        cur = await check.execute("SELECT version FROM projector_schema")
        assert await cur.fetchone() == (2,)


# --- finding a key's earlier rows by its first 8 bytes ---------------------------------------


def test_sqlite_finds_earlier_rows_of_a_key_through_the_prefix_index(db_path: Path) -> None:
    conn = log.connect(db_path)
    log.migrate(conn)
    deliveries = sample_deliveries()
    log.append_batch(conn, deliveries)
    keys = [d.event_key for d in deliveries[:3]]
    marks = ", ".join("?" * len(keys))
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT event_key, min(seq) FROM deliveries WHERE seq > 0"
        f" AND substr(event_key, 1, 8) IN ({marks}) AND event_key IN ({marks}) GROUP BY event_key",
        [*map(log.key_prefix, keys), *map(compact.compact_hex, keys)],
    ).fetchall()
    assert "USING INDEX deliveries_by_key_prefix" in plan[0][-1]
    # A key sharing another's first 8 bytes is not its repeat: the whole key decides.
    twin = keys[0][:16] + "0" * 48
    appended = log.append_batch(conn, [replace(deliveries[0], event_key=twin), deliveries[1]])
    assert [(a.duplicate_of) for a in appended] == [None, 2]


async def test_postgresql_finds_earlier_rows_of_a_key_through_the_prefix_index(
    pg_url: PostgresUrl,
) -> None:
    deliveries = sample_deliveries()
    async with opened(pg_url) as storage:
        for delivery in deliveries:
            await storage.log.append(delivery)
        twin = deliveries[0].event_key[:16] + "0" * 48
        twin_appended = await storage.log.append(replace(deliveries[0], event_key=twin))
        again = await storage.log.append(deliveries[1])
    assert (twin_appended.duplicate_of, again.duplicate_of) == (None, 2)
    async with raw(pg_url) as conn:
        cur = await conn.execute(
            f"EXPLAIN {FIRST_SEQS}", ([bytes.fromhex(d.event_key) for d in deliveries[:3]],)
        )
        plan = "\n".join(row[0] for row in await cur.fetchall())
    assert "deliveries_by_key_prefix" in plan

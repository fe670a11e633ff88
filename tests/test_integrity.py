"""The hash chain: row hashes, walking the log, the version 1 to 2 migration, `verify`."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from projector import integrity
from projector.integrity import GENESIS_HASH, HASHED_COLUMNS, row_hash
from projector.sender import environment_of
from projector.storage.sqlite import chain, log
from projector.storage.sqlite.chain import verify_chain
from tests.storage_support import (
    SLIPPED_BODY,
    append_all,
    delivery_of,
    open_log,
    sample_deliveries,
    slip_in,
    without_seq_check,
)
from tests.support import AUTH, KEY_BY_ENVIRONMENT, run_cli, sample_bodies, service_env, signed

ROW = (7, "2026-07-01T12:00:00Z", "live", "k", "raw", "{}", b"{}", None, None, "a", "s", None,
       "e", "[]", None)  # fmt: skip


def logged(path: Path, count: int = 40) -> sqlite3.Connection:
    """A migrated log on disk holding the first `count` sample deliveries."""
    conn = open_log(path)
    append_all(conn, sample_deliveries()[:count])
    return conn


def tamper(conn: sqlite3.Connection, sql: str, *params: object) -> None:
    """What an attacker with file access does: drop the guard triggers, then edit rows."""
    conn.execute("DROP TRIGGER IF EXISTS deliveries_no_update")
    conn.execute("DROP TRIGGER IF EXISTS deliveries_no_delete")
    conn.execute(sql, params)


def test_row_hash_is_deterministic_and_hex_sha256() -> None:
    """The same row after the same hash gives the same 64-hex-digit digest."""
    first = row_hash(GENESIS_HASH, ROW)
    assert first == row_hash(GENESIS_HASH, ROW)
    assert len(first) == 64
    int(first, 16)


@pytest.mark.parametrize("column", range(len(HASHED_COLUMNS)), ids=HASHED_COLUMNS)
def test_changing_any_column_changes_the_row_hash(column: int) -> None:
    """Every column is covered: a change anywhere gives another hash."""
    changed = list(ROW)
    changed[column] = {None: "x", b"{}": b"{ }"}.get(ROW[column])  # type: ignore[call-overload]
    assert row_hash(GENESIS_HASH, changed) != row_hash(GENESIS_HASH, ROW)


def test_the_row_encoding_is_pinned_so_existing_logs_keep_verifying() -> None:
    """A change to how rows are hashed would break every stored chain: this value is fixed."""
    expected = "937df71f47c9767f2b8d9c00534dca6983ed87034bd74e18feddadf2663bbb31"
    assert row_hash(GENESIS_HASH, ROW) == expected


def test_the_previous_hash_is_part_of_the_row_hash() -> None:
    """Chaining: the same row after another predecessor hashes differently."""
    assert row_hash(GENESIS_HASH, ROW) != row_hash("1" * 64, ROW)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("ab", "c"), ("a", "bc")),
        ((None,), ("",)),
        (("1",), (1,)),
        ((b"x",), ("x",)),
    ],
    ids=["field_boundaries", "null_vs_empty", "text_vs_integer", "bytes_vs_text"],
)
def test_values_that_concatenate_alike_hash_differently(
    left: tuple[integrity.Value, ...], right: tuple[integrity.Value, ...]
) -> None:
    """Fields are typed and length-prefixed, so shifting bytes between them is detected."""
    assert row_hash(GENESIS_HASH, left) != row_hash(GENESIS_HASH, right)


def test_an_empty_log_is_intact_with_the_genesis_hash(db_path: Path) -> None:
    """Nothing logged: intact, head 0, the all-zero genesis hash."""
    report = verify_chain(open_log(db_path))
    assert (report.intact, report.rows, report.head_seq) == (True, 0, 0)
    assert report.head_hash == GENESIS_HASH


def test_appended_rows_form_an_intact_chain_ending_at_the_stored_head_hash(
    db_path: Path,
) -> None:
    """append_batch chains every row, across batches and within one batch."""
    conn = logged(db_path, 30)
    log.append_batch(conn, sample_deliveries()[30:50])
    report = verify_chain(conn, chunk=7)
    assert report.intact, report.problem
    assert (report.rows, report.head_seq) == (50, 50)
    assert chain.head_hash(conn) == (50, report.head_hash)


def test_an_altered_body_is_reported_at_its_seq(db_path: Path) -> None:
    """Changing one byte of one body breaks the chain exactly there."""
    conn = logged(db_path)
    tamper(conn, "UPDATE deliveries SET body = body || x'20' WHERE seq = 17")
    report = verify_chain(conn)
    assert (report.intact, report.broken_at, report.head_seq) == (False, 17, 16)
    assert report.problem is not None
    assert "altered" in report.problem


def test_a_row_rehashed_after_editing_breaks_the_chain_at_the_next_row(db_path: Path) -> None:
    """Recomputing the edited row's own hash does not help: its successor no longer matches."""
    conn = logged(db_path)
    tamper(conn, "UPDATE deliveries SET slug = 'edited' WHERE seq = 9")
    [before, row] = chain.rows_after(conn, 7, 2)
    rehashed = bytes.fromhex(row_hash(before.row_hash, row.content))
    conn.execute("UPDATE deliveries SET row_hash = ? WHERE seq = 9", (rehashed,))
    assert verify_chain(conn).broken_at == 10


def test_a_deleted_row_is_reported_as_a_missing_seq(db_path: Path) -> None:
    """A gap in seq is named: the first missing seq and what came instead."""
    conn = logged(db_path)
    tamper(conn, "DELETE FROM deliveries WHERE seq = 5")
    report = verify_chain(conn)
    assert (report.broken_at, report.head_seq) == (5, 4)
    assert report.problem == "seq 5 is missing: the next row has seq 6"


def test_a_deleted_head_row_is_not_detectable_by_the_chain_alone(db_path: Path) -> None:
    """Truncation at the head leaves a valid shorter chain: why operators record the head hash."""
    conn = logged(db_path)
    recorded = chain.head_hash(conn)
    tamper(conn, "DELETE FROM deliveries WHERE seq = 40")
    report = verify_chain(conn)
    assert report.intact
    assert (report.head_seq, report.head_hash) != recorded


def test_an_insert_without_a_row_hash_is_refused_by_the_trigger(db_path: Path) -> None:
    """A writer that forgets the chain cannot append."""
    conn = logged(db_path, 1)
    with pytest.raises(sqlite3.DatabaseError, match="row_hash"):
        conn.execute(
            "INSERT INTO deliveries (seq, received_at, environment, key_id, signed_as, headers,"
            " body, event_key, flags) VALUES (2, 't', 'live', 'k', 'raw', '{}', x'00', 'e', '[]')"
        )


def version_1_log(path: Path, count: int) -> list[tuple[object, ...]]:
    """A log as refold-projector 0.1 (schema version 1, no hashes) left it; returns its rows."""
    conn = log.connect(path)
    with log.transaction(conn):
        log.MIGRATIONS[0](conn)
        conn.execute("PRAGMA user_version = 1")
    columns = ", ".join(HASHED_COLUMNS)
    source = logged(path.with_name("source.sqlite3"), count)
    rows = [row.content for row in chain.rows_after(source, 0, count)]
    conn.executemany(f"INSERT INTO deliveries ({columns}) VALUES ({', '.join('?' * 15)})", rows)
    conn.close()
    return rows


def test_migrating_a_version_1_log_hashes_every_row_and_changes_nothing_else(
    db_path: Path,
) -> None:
    """The upgrade adds an intact chain over the old rows; their content stays byte-identical."""
    rows = version_1_log(db_path, 60)
    conn = log.connect(db_path)
    assert log.migrate(conn) == log.LOG_SCHEMA_VERSION == 4
    assert [row.content for row in chain.rows_after(conn, 0, 100)] == rows
    assert verify_chain(conn).intact
    log.append_batch(conn, sample_deliveries()[60:65])
    assert verify_chain(conn).head_seq == 65
    assert verify_chain(conn).intact
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE deliveries SET body = x'00' WHERE seq = 1")


def test_verify_on_an_intact_log_exits_0_and_prints_the_head_hash(db_path: Path) -> None:
    """`projector verify` says the log is intact and which hash its head has."""
    conn = logged(db_path)
    seq, head = chain.head_hash(conn)
    conn.close()
    done = run_cli("verify", env=service_env(db_path))
    assert done.returncode == 0, done.stderr
    assert "chain: 40 rows, seq 1..40 without gaps, hashes match" in done.stdout
    assert f"head: seq {seq}, hash {head}" in done.stdout
    assert done.stdout.rstrip().endswith("log intact")


def test_verify_on_a_tampered_log_exits_1_naming_the_first_broken_row(db_path: Path) -> None:
    """The first row that breaks the chain is named, with where the log is still intact."""
    conn = logged(db_path)
    tamper(conn, "UPDATE deliveries SET body = x'7b7d' WHERE seq = 23")
    conn.close()
    done = run_cli("verify", env=service_env(db_path))
    assert done.returncode == 1
    assert "chain: broken at seq 23:" in done.stdout
    assert "intact up to seq 22" in done.stdout
    assert "log NOT intact" in done.stdout


def test_verify_on_a_version_1_log_exits_2_and_says_how_to_upgrade(db_path: Path) -> None:
    """verify never writes, so an old log is not upgraded behind the operator's back."""
    version_1_log(db_path, 3)
    done = run_cli("verify", env=service_env(db_path))
    assert done.returncode == 2
    assert "start `projector serve`" in done.stderr


def test_verify_on_a_missing_database_exits_2(tmp_path: Path) -> None:
    """No file: a configuration error naming PROJECTOR_DB, not a new empty database."""
    missing = tmp_path / "absent.sqlite3"
    done = run_cli("verify", env=service_env(missing))
    assert done.returncode == 2
    assert "PROJECTOR_DB" in done.stderr
    assert not missing.exists()


async def test_projections_answer_shows_the_head_hash_verify_computes(
    client: TestClient, db_path: Path
) -> None:
    """Operators can record the head hash from the API and check it later with `verify`."""
    empty = await (await client.get("/v1/projections", headers=AUTH)).json()
    assert (empty["log_head"], empty["log_head_hash"]) == (0, GENESIS_HASH)
    for body in sample_bodies()[:5]:
        environment = environment_of(body, "test")
        answer = await client.post(
            "/webhooks/refold", data=body, headers=signed(body, KEY_BY_ENVIRONMENT[environment])
        )
        assert answer.status == 200
    state = await (await client.get("/v1/projections", headers=AUTH)).json()
    report = verify_chain(log.connect(db_path, readonly=True))
    assert (state["log_head"], state["log_head_hash"]) == (5, report.head_hash)


# --- rows outside the chain's seq 1..head -------------------------------------------------------


def slipped(path: Path, seq: int) -> sqlite3.Connection:
    """A 40-row log created before CHECK (seq > 0), with a row slipped in at `seq`."""
    logged(path).close()
    without_seq_check(path)
    conn = log.connect(path)
    slip_in(conn, seq, delivery_of(SLIPPED_BODY))
    return conn


@pytest.mark.parametrize("seq", [0, -7])
def test_a_row_slipped_in_below_seq_1_is_reported_at_its_seq(db_path: Path, seq: int) -> None:
    """The walk starts at seq 1; counting the table shows the row it never reached."""
    report = verify_chain(slipped(db_path, seq), chunk=7)
    assert (report.intact, report.broken_at, report.rows, report.head_seq) == (False, seq, 40, 40)
    assert report.problem is not None
    assert f"a row with seq {seq} lies outside the chain's seq 1..40" in report.problem
    assert "the log holds 41 rows, the chain 40" in report.problem


@pytest.mark.parametrize(
    ("seq", "named"),
    [(0, "broken at seq 0: a row with seq 0 lies outside"),
     (-7, "broken at seq -7: a row with seq -7 lies outside"),
     (50, "broken at seq 41: seq 41 is missing: the next row has seq 50")],
    ids=["zero", "negative", "beyond_the_head"],
)  # fmt: skip
def test_verify_exits_1_naming_a_row_slipped_in_outside_seq_1_to_head(
    db_path: Path, seq: int, named: str
) -> None:
    """`projector verify` fails on a log holding a row its chain does not cover, and names it."""
    slipped(db_path, seq).close()
    done = run_cli("verify", env=service_env(db_path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"chain: {named}" in done.stdout
    assert "intact up to seq 40" in done.stdout
    assert done.stdout.rstrip().endswith("log NOT intact: restore from a backup you verified")


def test_rows_appended_while_verify_walks_are_neither_walked_nor_counted(db_path: Path) -> None:
    """The walk and the count read one snapshot: a running server's appends are no break."""
    conn = logged(db_path)
    writer = log.connect(db_path)
    appended: list[int] = []

    def append_before_the_count(statement: str) -> None:
        if statement.startswith("SELECT count(*)") and not appended:
            appended.extend(a.seq for a in log.append_batch(writer, sample_deliveries()[40:45]))

    conn.set_trace_callback(append_before_the_count)
    report = verify_chain(conn, chunk=7)
    conn.set_trace_callback(None)
    assert appended == [41, 42, 43, 44, 45]  # the append really landed during the walk
    assert report.intact, report.problem
    assert (report.rows, report.head_seq) == (40, 40)
    assert verify_chain(conn).head_seq == 45


@pytest.mark.parametrize(
    ("removed", "first_missing", "next_row"),
    [((1,), 1, 2), ((7, 8), 7, 9), ((20,), 20, 25)],
    ids=["first", "middle", "last_before_a_slipped_row"],
)
def test_check_without_gaps_names_the_first_missing_seq_and_the_row_after_it(
    db_path: Path, removed: tuple[int, ...], first_missing: int, next_row: int
) -> None:
    conn = open_log(db_path)
    log.append_batch(conn, sample_deliveries()[:20])
    slip_in(conn, 25, delivery_of(SLIPPED_BODY))  # drops the guards, so rows can be deleted
    conn.executemany("DELETE FROM deliveries WHERE seq = ?", [(seq,) for seq in removed])
    expected = f"no row with seq {first_missing} (the next row has seq {next_row})"
    with pytest.raises(integrity.LogNotIntact, match=re.escape(expected)):
        chain.check_without_gaps(conn, log.head(conn))


def test_check_without_gaps_passes_an_intact_log_and_an_empty_one(db_path: Path) -> None:
    conn = open_log(db_path)
    chain.check_without_gaps(conn, 0)
    log.append_batch(conn, sample_deliveries()[:20])
    chain.check_without_gaps(conn, 20)

"""The append-only log on a real SQLite file: schema, append, integrity, read."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from projector import integrity
from projector.storage.compact import headers_of, instant_of
from projector.storage.rows import Appended
from projector.storage.sqlite import log
from tests.storage_support import (
    SLIPPED_BODY,
    append_as_version_3,
    before_first_begin,
    delivery_of,
    logical_rows,
    new_delivery,
    open_log,
    sample_deliveries,
    slip_in,
    without_seq_check,
)

CREATED = (
    b'{"linked_account_id":"acct_1","org_id":"o","environment":"live","type":"General",'
    b'"event":"Connection Created","slug":"hubspot","createdAt":"Mon, 01 Jun 2026 05:42:56 GMT"}'
)
EXPIRED = CREATED.replace(b"Connection Created", b"Connection Expired")


def test_migrate_on_a_fresh_file_sets_the_schema_version_wal_and_full_sync(
    db_path: Path,
) -> None:
    """A fresh file ends up at LOG_SCHEMA_VERSION, in WAL mode, with synchronous=FULL."""
    conn = log.connect(db_path)
    assert log.migrate(conn) == log.LOG_SCHEMA_VERSION
    assert conn.execute("PRAGMA user_version").fetchone()[0] == log.LOG_SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert log.head(conn) == 0


def test_migrate_twice_is_a_no_op_that_keeps_the_rows(db_path: Path) -> None:
    """Running migrate again changes neither the version nor the log."""
    conn = open_log(db_path)
    log.append_batch(conn, [delivery_of(CREATED)])
    assert log.migrate(conn) == log.LOG_SCHEMA_VERSION
    conn.close()
    again = open_log(db_path)
    assert again.execute("PRAGMA user_version").fetchone()[0] == log.LOG_SCHEMA_VERSION
    assert log.head(again) == 1


def test_migrate_that_another_process_finished_first_finds_the_schema_current(
    db_path: Path,
) -> None:
    """Two starts on a fresh file: the one that migrates second sees the schema already there."""
    starting = log.connect(db_path)
    other = log.connect(db_path)
    # The other migrates after `starting` read user_version 0, before it takes the write lock.
    raced = before_first_begin(starting, lambda: log.migrate(other))
    assert log.migrate(starting) == log.LOG_SCHEMA_VERSION
    assert raced == [log.LOG_SCHEMA_VERSION]
    assert starting.execute("PRAGMA user_version").fetchone()[0] == log.LOG_SCHEMA_VERSION


def test_migrate_refuses_a_database_from_a_newer_version_and_says_to_upgrade(
    db_path: Path,
) -> None:
    """A user_version above the code's raises LogSchemaError telling the user to upgrade."""
    conn = log.connect(db_path)
    conn.execute(f"PRAGMA user_version = {log.LOG_SCHEMA_VERSION + 1}")
    with pytest.raises(log.LogSchemaError, match="upgrade"):
        log.migrate(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == log.LOG_SCHEMA_VERSION + 1


def test_migrating_a_version_2_log_indexes_its_flagged_deliveries_and_changes_no_row(
    db_path: Path,
) -> None:
    """Version 3 adds the partial index of flagged deliveries; the log's rows stay as they were."""
    conn = log.connect(db_path)
    with log.transaction(conn):
        for migration in log.MIGRATIONS[:2]:
            migration(conn)
        conn.execute("PRAGMA user_version = 2")
    append_as_version_3(conn, [*sample_deliveries()[:40], new_delivery(b"[]", "live")])
    rows = conn.execute("SELECT * FROM deliveries ORDER BY seq").fetchall()
    assert log.migrate(conn) == log.LOG_SCHEMA_VERSION == 4
    assert logical_rows(conn) == rows
    (index,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'deliveries_flagged'"
    ).fetchone()
    assert index.endswith("WHERE flags <> '[]'")
    indexed = conn.execute(
        "SELECT seq FROM deliveries INDEXED BY deliveries_flagged"
        " WHERE environment = 'live' AND flags <> '[]' ORDER BY seq"
    ).fetchall()
    flagged = conn.execute(
        "SELECT seq FROM deliveries WHERE environment = 'live' AND json_array_length(flags) > 0"
    ).fetchall()
    assert indexed == flagged
    assert (41,) in indexed  # the not_an_object delivery


def test_append_batch_numbers_deliveries_without_gaps_across_batches(db_path: Path) -> None:
    """Seqs run 1..n in append order, whatever the batch sizes."""
    conn = open_log(db_path)
    deliveries = sample_deliveries()[:30]
    seqs = []
    for size in (1, 7, 2, 20):
        batch, deliveries = deliveries[:size], deliveries[size:]
        seqs += [appended.seq for appended in log.append_batch(conn, batch)]
    assert seqs == list(range(1, 31))
    assert [row[0] for row in conn.execute("SELECT seq FROM deliveries ORDER BY seq")] == seqs
    assert log.head(conn) == 30


def test_a_repeated_event_points_at_its_first_seq_even_within_one_batch(db_path: Path) -> None:
    """Repeats get duplicate_of = the first seq, in a later batch and inside the same batch."""
    conn = open_log(db_path)
    first = log.append_batch(conn, [delivery_of(CREATED)])
    later = log.append_batch(
        conn, [delivery_of(EXPIRED), delivery_of(CREATED), delivery_of(EXPIRED)]
    )
    assert first == [Appended(1, None)]
    assert later == [Appended(2, None), Appended(3, 1), Appended(4, 2)]
    stored = conn.execute("SELECT seq, duplicate_of FROM deliveries ORDER BY seq").fetchall()
    assert stored == [(1, None), (2, None), (3, 1), (4, 2)]


def test_the_same_body_in_another_environment_is_not_a_duplicate(db_path: Path) -> None:
    """Event identity includes the environment the key verified."""
    conn = open_log(db_path)
    body = CREATED.replace(b'"environment":"live",', b"")
    appended = log.append_batch(conn, [new_delivery(body, "live"), new_delivery(body, "test")])
    assert [a.duplicate_of for a in appended] == [None, None]


def test_update_of_a_delivery_is_refused_and_leaves_the_row_unchanged(db_path: Path) -> None:
    """The log is append-only: UPDATE raises and nothing changes."""
    conn = open_log(db_path)
    log.append_batch(conn, [delivery_of(CREATED)])
    before = conn.execute("SELECT * FROM deliveries").fetchall()
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE deliveries SET body = x'00', event = 'forged' WHERE seq = 1")
    assert conn.execute("SELECT * FROM deliveries").fetchall() == before


def test_delete_of_a_delivery_is_refused_and_leaves_the_row_in_place(db_path: Path) -> None:
    """The log is append-only: DELETE raises and the row stays."""
    conn = open_log(db_path)
    log.append_batch(conn, [delivery_of(CREATED)])
    before = conn.execute("SELECT * FROM deliveries").fetchall()
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM deliveries")
    assert conn.execute("SELECT * FROM deliveries").fetchall() == before


@pytest.mark.parametrize("offset", [0, 2, -5], ids=["repeat_head", "skip_one", "negative"])
def test_a_seq_other_than_head_plus_one_is_refused_by_the_trigger(
    db_path: Path, offset: int
) -> None:
    """A direct INSERT that would leave a gap, or reuse a seq, is aborted."""
    conn = open_log(db_path)
    log.append_batch(conn, [delivery_of(CREATED)])
    with pytest.raises(sqlite3.DatabaseError, match="head \\+ 1"):
        conn.execute(
            "INSERT INTO deliveries (seq, received_at, environment, key_id, signed_as, headers,"
            " body, event_key, flags, row_hash)"
            " VALUES (?, 't', 'live', 'k', 'raw', '{}', x'00', 'e', '[]', ?)",
            (log.head(conn) + offset, bytes(32)),
        )
    assert log.head(conn) == 1
    assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 1


def test_a_direct_insert_at_head_plus_one_is_accepted(db_path: Path) -> None:
    """The trigger lets the next seq in, so it refuses gaps only."""
    conn = open_log(db_path)
    log.append_batch(conn, [delivery_of(CREATED)])
    conn.execute(
        "INSERT INTO deliveries (seq, received_at, environment, key_id, signed_as, headers,"
        " body, event_key, flags, row_hash)"
        " VALUES (2, 't', 'live', 'k', 'raw', '{}', x'00', 'e', '[]', ?)",
        (bytes(32),),
    )
    assert log.head(conn) == 2


def test_bodies_are_stored_byte_for_byte_including_invalid_utf8(db_path: Path) -> None:
    """Whatever bytes arrived come back out, invalid UTF-8 and NUL included."""
    conn = open_log(db_path)
    bodies = [
        b"\xff\xfe\x00not json \x80\xc3(",
        CREATED + b"\n",
        b' {"event": "Workflow Completed", "x": "caf\xc3\xa9"} ',
        b"",
    ]
    log.append_batch(conn, [new_delivery(body, "live") for body in bodies])
    stored = conn.execute("SELECT body, typeof(body) FROM deliveries ORDER BY seq").fetchall()
    assert [body for body, _ in stored] == bodies
    assert {kind for _, kind in stored} == {"blob"}
    assert [d.body for d in log.read_after(conn, 0, 10)] == bodies


def test_append_batch_stores_every_field_of_the_delivery(db_path: Path) -> None:
    """Headers and flags round-trip as JSON; the searchable columns hold the parsed values.

    received_at, headers and event_key are stored compact (an integer, BLOBs), exactly.
    """
    conn = open_log(db_path)
    delivery = replace(
        new_delivery(b"not json", "test"),
        headers={"user-agent": "refold", "content-type": "application/json"},
        signed_as="compact",
    )
    log.append_batch(conn, [delivery])
    row = conn.execute(
        "SELECT received_at, environment, key_id, signed_as, headers, event, kind, flags,"
        " event_key, typeof(received_at), typeof(headers), typeof(event_key), typeof(row_hash)"
        " FROM deliveries"
    ).fetchone()
    assert row[9:] == ("integer", "blob", "blob", "blob")
    assert instant_of(row[0]) == delivery.received_at
    assert row[1:4] == ("test", delivery.key_id, "compact")
    assert json.loads(headers_of(row[4])) == delivery.headers
    assert row[5:7] == (None, None)
    assert json.loads(row[7]) == ["not_json"]
    assert row[8] == bytes.fromhex(delivery.event_key)


def test_read_after_returns_the_deliveries_after_a_seq_in_order(db_path: Path) -> None:
    """read_after(after, limit) gives at most `limit` rows, seqs after `after`, ascending."""
    conn = open_log(db_path)
    deliveries = sample_deliveries()[:20]
    log.append_batch(conn, deliveries)
    page = log.read_after(conn, 5, 4)
    assert [d.seq for d in page] == [6, 7, 8, 9]
    assert [d.body for d in page] == [d.body for d in deliveries[5:9]]
    assert [d.environment for d in page] == [d.environment for d in deliveries[5:9]]
    assert [d.flags for d in page] == [d.flags for d in deliveries[5:9]]
    assert log.read_after(conn, 20, 10) == []


def test_read_seqs_returns_exactly_those_deliveries_in_log_order(db_path: Path) -> None:
    """The rebuild's strays are read back by seq: the ones asked for, in seq order."""
    conn = open_log(db_path)
    deliveries = sample_deliveries()
    log.append_batch(conn, deliveries)
    read = log.read_seqs(conn, [40, 3, 17, 9999])
    assert [d.seq for d in read] == [3, 17, 40]
    assert [d.body for d in read] == [deliveries[i - 1].body for i in (3, 17, 40)]


def test_read_back_marks_the_repeats_of_earlier_deliveries(db_path: Path) -> None:
    """LoggedDelivery.duplicate_of carries what append_batch decided."""
    conn = open_log(db_path)
    appended = log.append_batch(conn, sample_deliveries())
    assert [d.duplicate_of for d in log.read_after(conn, 0, 1000)] == [
        a.duplicate_of for a in appended
    ]
    assert any(a.duplicate_of is not None for a in appended)


def test_a_failing_row_rolls_back_its_whole_batch(db_path: Path) -> None:
    """One row violating NOT NULL leaves the head where it was and stores nothing of the batch."""
    conn = open_log(db_path)
    log.append_batch(conn, [delivery_of(CREATED)])
    broken = replace(delivery_of(EXPIRED), body=None)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        log.append_batch(conn, [delivery_of(EXPIRED), broken, delivery_of(CREATED)])
    assert not conn.in_transaction
    assert log.head(conn) == 1
    assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 1
    assert log.append_batch(conn, [delivery_of(EXPIRED)]) == [Appended(2, None)]


def test_a_committed_batch_is_visible_to_another_connection(db_path: Path) -> None:
    """append_batch returns after COMMIT: a fresh read-only connection sees every row."""
    conn = open_log(db_path)
    log.append_batch(conn, sample_deliveries()[:10])
    reader = log.connect(db_path, readonly=True)
    assert log.head(reader) == 10
    with pytest.raises(sqlite3.OperationalError):
        reader.execute("DELETE FROM deliveries")


# --- rows slipped in below seq 1 -------------------------------------------------------------


def test_a_new_log_refuses_a_seq_below_1_even_with_the_guard_triggers_dropped(
    db_path: Path,
) -> None:
    """CHECK (seq > 0) is part of the table: dropping the triggers does not lift it."""
    conn = open_log(db_path)
    log.append_batch(conn, [delivery_of(CREATED)])
    for seq in (0, -3):
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            slip_in(conn, seq, delivery_of(SLIPPED_BODY))
    assert conn.execute("SELECT seq FROM deliveries").fetchall() == [(1,)]


def slipped_log(path: Path, seqs: tuple[int, ...], count: int = 20) -> sqlite3.Connection:
    """A log created before CHECK (seq > 0), of `count` samples plus rows slipped in at `seqs`."""
    conn = open_log(path)
    log.append_batch(conn, sample_deliveries()[:count])
    conn.close()
    without_seq_check(path)
    conn = log.connect(path)
    for seq in seqs:
        slip_in(conn, seq, delivery_of(SLIPPED_BODY))
    return conn


def test_read_after_never_returns_a_row_below_seq_1(db_path: Path) -> None:
    """Folding reads only the rows verify walks, whatever position it is asked to start from."""
    conn = slipped_log(db_path, (0, -2))
    assert [d.seq for d in log.read_after(conn, -5, 100)] == list(range(1, 21))
    assert [d.seq for d in log.read_after(conn, 0, 3)] == [1, 2, 3]


def test_a_row_slipped_in_below_seq_1_does_not_make_a_new_delivery_a_repeat(
    db_path: Path,
) -> None:
    """Only rows from seq 1 on can be the first of an event: the new one is no repeat."""
    conn = slipped_log(db_path, (0,))
    [appended] = log.append_batch(conn, [delivery_of(SLIPPED_BODY)])
    assert appended == Appended(21, None)


def test_read_after_stops_at_a_gap_naming_the_missing_seq(db_path: Path) -> None:
    """No reader of the log for folding ever gets a row past a gap verify cannot prove."""
    conn = open_log(db_path)
    log.append_batch(conn, sample_deliveries()[:20])
    slip_in(conn, 25, delivery_of(SLIPPED_BODY))
    assert [d.seq for d in log.read_after(conn, 0, 20)] == list(range(1, 21))
    with pytest.raises(
        integrity.LogNotIntact, match=r"no row with seq 21 \(the next row has seq 25\)"
    ):
        log.read_after(conn, 18, 5)

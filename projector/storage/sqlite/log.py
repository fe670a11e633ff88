"""The append-only event log: schema, append, read. Synchronous; the write lane calls it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from projector.integrity import GENESIS_HASH, HASHED_COLUMNS, row_hash
from projector.storage.compact import compact_hex, hex_of
from projector.storage.port import LogSchemaError
from projector.storage.rows import (
    LOGGED_COLUMNS,
    Appended,
    Change,
    LoggedDelivery,
    NewDelivery,
    StoredRow,
    check_continues,
    logged_deliveries,
    logged_delivery,
    number_batch,
    stored_form,
)
from projector.storage.sqlite.chain import hashed_rows, head_hash, rows_after

LOG_SCHEMA_VERSION = 4

_CREATE_LOG = """
    CREATE TABLE deliveries (
        seq INTEGER PRIMARY KEY CHECK (seq > 0),
        received_at TEXT NOT NULL,
        environment TEXT NOT NULL,
        key_id TEXT NOT NULL,
        signed_as TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BLOB NOT NULL,
        event TEXT,
        kind TEXT,
        linked_account_id TEXT,
        slug TEXT,
        instance_id TEXT,
        event_key TEXT NOT NULL,
        flags TEXT NOT NULL,
        duplicate_of INTEGER REFERENCES deliveries (seq)
    );
    CREATE INDEX deliveries_by_event_key ON deliveries (event_key, seq);
    CREATE INDEX deliveries_by_account ON deliveries (environment, linked_account_id, seq);
    CREATE INDEX deliveries_by_event ON deliveries (environment, event, seq);
    CREATE INDEX deliveries_by_instance ON deliveries (environment, instance_id, seq)
        WHERE instance_id IS NOT NULL;
    CREATE TRIGGER deliveries_seq_without_gaps BEFORE INSERT ON deliveries
        WHEN NEW.seq IS NOT (SELECT coalesce(max(seq), 0) + 1 FROM deliveries)
        BEGIN SELECT RAISE(ABORT, 'event log: seq must be the head + 1'); END;
    CREATE TRIGGER deliveries_no_delete BEFORE DELETE ON deliveries
        BEGIN SELECT RAISE(ABORT, 'event log is append-only: DELETE refused'); END;
"""

_NO_UPDATE = """
    CREATE TRIGGER deliveries_no_update BEFORE UPDATE ON deliveries
        BEGIN SELECT RAISE(ABORT, 'event log is append-only: UPDATE refused'); END
"""


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it would COMMIT the migration's transaction half-way.
    for statement in script.split(";\n"):
        if statement.strip():
            conn.execute(statement)


def _add_hash_chain(conn: sqlite3.Connection) -> None:
    """Version 2: every row carries a SHA-256 chained to the previous row's."""
    conn.execute("ALTER TABLE deliveries ADD COLUMN row_hash TEXT NOT NULL DEFAULT ''")
    conn.execute(
        "CREATE TRIGGER deliveries_hash_required BEFORE INSERT ON deliveries"
        " WHEN length(NEW.row_hash) IS NOT 64"
        " BEGIN SELECT RAISE(ABORT, 'event log: row_hash must be a SHA-256 hex digest'); END"
    )
    # Rows logged before version 2 get their hashes once, here; the trigger is back
    # before this transaction commits, so no other writer ever sees the log updatable.
    conn.execute("DROP TRIGGER deliveries_no_update")
    previous = GENESIS_HASH
    for seq, content, _ in hashed_rows(conn):  # a chunk at a time, read before it is updated
        previous = row_hash(previous, content)
        conn.execute("UPDATE deliveries SET row_hash = ? WHERE seq = ?", (previous, seq))
    _run_script(conn, _NO_UPDATE)


# Version 3 indexes the flagged deliveries (clean ones store exactly '[]'); a query uses the
# index only when its WHERE holds this same term, literally.
FLAGGED = "flags <> '[]'"
_FLAGGED_INDEX = f"CREATE INDEX deliveries_flagged ON deliveries (environment, seq) WHERE {FLAGGED}"

# Version 4 stores rows compact (projector.storage.compact), and finds a key's earlier rows
# by its first 8 bytes (`key_prefix`): a third of the index on the whole key and seq. The
# columns declared BLOB have no type affinity, so each value keeps the type it is stored
# with: an integer (received_at) or a BLOB (headers, the hex digests) where the compact form
# is exact, the text otherwise.
_CREATE_COMPACT_LOG = """
    CREATE TABLE deliveries_v4 (
        seq INTEGER PRIMARY KEY CHECK (seq > 0),
        received_at BLOB NOT NULL,
        environment TEXT NOT NULL,
        key_id TEXT NOT NULL,
        signed_as TEXT NOT NULL,
        headers BLOB NOT NULL,
        body BLOB NOT NULL,
        event TEXT,
        kind TEXT,
        linked_account_id TEXT,
        slug TEXT,
        instance_id TEXT,
        event_key BLOB NOT NULL,
        flags TEXT NOT NULL,
        duplicate_of INTEGER REFERENCES deliveries (seq),
        row_hash BLOB NOT NULL
    )
"""
_COMPACT_LOG_INDEXES = """
    CREATE INDEX deliveries_by_key_prefix ON deliveries (substr(event_key, 1, 8));
    CREATE INDEX deliveries_by_account ON deliveries (environment, linked_account_id, seq);
    CREATE INDEX deliveries_by_event ON deliveries (environment, event, seq);
    CREATE INDEX deliveries_by_instance ON deliveries (environment, instance_id, seq)
        WHERE instance_id IS NOT NULL;
    CREATE TRIGGER deliveries_seq_without_gaps BEFORE INSERT ON deliveries
        WHEN NEW.seq IS NOT (SELECT coalesce(max(seq), 0) + 1 FROM deliveries)
        BEGIN SELECT RAISE(ABORT, 'event log: seq must be the head + 1'); END;
    CREATE TRIGGER deliveries_no_delete BEFORE DELETE ON deliveries
        BEGIN SELECT RAISE(ABORT, 'event log is append-only: DELETE refused'); END;
    CREATE TRIGGER deliveries_hash_required BEFORE INSERT ON deliveries
        WHEN typeof(NEW.row_hash) IS NOT 'blob' OR length(NEW.row_hash) IS NOT 32
        BEGIN SELECT RAISE(ABORT, 'event log: row_hash must be a SHA-256 digest'); END
"""


def _compact_rows(conn: sqlite3.Connection) -> None:
    """Version 4: every row copied into a table of compact stored forms, in this transaction.

    Only the stored form changes: each row reads back as the same logical row, so the chain
    and its head hash are unchanged. The space the old table held is free pages until VACUUM.
    """
    (below,) = conn.execute("SELECT min(seq) FROM deliveries WHERE seq < 1").fetchone()
    if below is not None:
        raise LogSchemaError(
            f"the event log holds a row with seq {below}, outside the chain (seq 1 up), which "
            "the upgrade to log schema version 4 cannot carry: run `projector verify`, and "
            "restore the log from a backup"
        )
    conn.execute(_CREATE_COMPACT_LOG)
    after = 0
    # A chunk at a time: memory stays flat on any log. The compact forms are checked per
    # row: a value that does not convert back exactly is kept as it is.
    while rows := rows_after(conn, after, 5000):
        insert_many(conn, _INSERT_COMPACT, [stored_form(r.content, r.row_hash) for r in rows])
        after = rows[-1].seq
    # Dropping a table fires no trigger; its indexes and triggers go with it, and come back
    # on the new table before this transaction commits.
    conn.execute("DROP TABLE deliveries")
    conn.execute("ALTER TABLE deliveries_v4 RENAME TO deliveries")
    _run_script(conn, _COMPACT_LOG_INDEXES + ";\n" + _NO_UPDATE + ";\n" + _FLAGGED_INDEX)


# Each entry migrates the log from version N to N+1; start-up applies the missing ones.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    lambda conn: _run_script(conn, _CREATE_LOG + ";\n" + _NO_UPDATE),
    _add_hash_chain,
    lambda conn: _run_script(conn, _FLAGGED_INDEX),
    _compact_rows,
)


@dataclass(frozen=True)
class Committed:
    """What the projectors need of a delivery this process just appended: its change."""

    change: Change | None


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the database with the durability settings the invariants need."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # WAL + FULL: a committed transaction survives power loss, not just a crash.
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=OFF")  # duplicate_of is documentation; checks cost a read
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error.

    IMMEDIATE takes the write lock at the start, so a transaction that reads and then
    writes (head + 1, a checkpoint) cannot be overtaken by another writer in between.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _too_new(version: int) -> LogSchemaError:
    return LogSchemaError(
        f"the database has log schema version {version}, but this refold-projector knows "
        f"only up to {LOG_SCHEMA_VERSION}: upgrade refold-projector before running it on "
        "this database"
    )


def check_version(conn: sqlite3.Connection) -> None:
    """Refuse, without writing, a log that is not exactly at this code's schema version."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > LOG_SCHEMA_VERSION:
        raise _too_new(version)
    if version < LOG_SCHEMA_VERSION:
        raise LogSchemaError(
            f"the database has log schema version {version}, older than this "
            f"refold-projector's {LOG_SCHEMA_VERSION}: start `projector serve` (or run "
            "`projector rebuild`) once to upgrade it, then try again"
        )


@contextmanager
def relaxed_sync(conn: sqlite3.Connection) -> Iterator[None]:
    """Commits on `conn` skip the fsync (synchronous=NORMAL) inside; FULL again after.

    Only for read-model writes: they hold nothing the log does not, and WAL with NORMAL
    stays consistent, so a power cut can only undo some of them, which are then refolded.
    The log's own commits stay FULL (and sync these pages too).
    """
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        yield
    finally:
        conn.execute("PRAGMA synchronous=FULL")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the log schema up to date; refuse a database newer than this code."""
    while True:
        with transaction(conn):
            # Read under the write lock: another process may have migrated since we looked.
            version: int = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > LOG_SCHEMA_VERSION:
                raise _too_new(version)
            if version == LOG_SCHEMA_VERSION:
                return version
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")


# The triggers that keep the log append-only, gap-free and hashed (created by MIGRATIONS).
GUARDS = (
    "deliveries_seq_without_gaps",
    "deliveries_no_delete",
    "deliveries_no_update",
    "deliveries_hash_required",
)


def missing_guards(conn: sqlite3.Connection) -> list[str]:
    """The GUARDS triggers that are not on the log (someone dropped them)."""
    present = {
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'deliveries'"
        )
    }
    return [name for name in GUARDS if name not in present]


def head(conn: sqlite3.Connection) -> int:
    """The last seq in the log, 0 when empty."""
    row = conn.execute("SELECT coalesce(max(seq), 0) FROM deliveries").fetchone()
    return int(row[0])


_INSERT_DELIVERY = f"INSERT INTO deliveries ({', '.join(HASHED_COLUMNS)}, row_hash)"
_INSERT_COMPACT = f"INSERT INTO deliveries_v4 ({', '.join(HASHED_COLUMNS)}, row_hash)"


def insert_many(conn: sqlite3.Connection, insert: str, rows: Sequence[Sequence[Any]]) -> None:
    """Run `insert` (all but its VALUES) for `rows`, up to 500 rows per statement.

    executemany steps once per row and gives up the GIL at every step; while the event loop
    is busy, each step then waits to win it back. One statement per 500 rows waits once.
    """
    for start in range(0, len(rows), 500):
        part = rows[start : start + 500]
        row = "(" + ", ".join("?" * len(part[0])) + ")"
        conn.execute(
            f"{insert} VALUES {', '.join([row] * len(part))}", [v for r in part for v in r]
        )


def key_prefix(key: str) -> bytes | str:
    """What deliveries_by_key_prefix indexes of an event key: `substr(event_key, 1, 8)`."""
    return compact_hex(key)[:8]


def _first_seqs(conn: sqlite3.Connection, keys: list[str]) -> dict[str, int]:
    """The first seq (from 1 on) logged under each of `keys` that has one."""
    found: dict[str, int] = {}
    for start in range(0, len(keys), 10_000):  # SQLite binds at most 32,766 values
        part = keys[start : start + 10_000]
        marks = ", ".join("?" * len(part))
        rows = conn.execute(
            # The prefix finds the candidates in the index, the whole key picks among them.
            # seq > 0: a row slipped in below the chain must not make a delivery a repeat.
            "SELECT event_key, min(seq) FROM deliveries WHERE seq > 0"
            f" AND substr(event_key, 1, 8) IN ({marks}) AND event_key IN ({marks})"
            " GROUP BY event_key",
            [*map(key_prefix, part), *map(compact_hex, part)],
        )
        found.update((hex_of(key), seq) for key, seq in rows)
    return found


def append_batch(conn: sqlite3.Connection, batch: Sequence[NewDelivery]) -> list[Appended]:
    """Append deliveries in one transaction; returns once the commit is durable."""
    # With synchronous=FULL the COMMIT at the end of this block returns only after the WAL is
    # fsynced: one fsync for the whole batch is what makes group commit pay.
    with transaction(conn):
        return append_rows(conn, batch)


def append_rows(conn: sqlite3.Connection, batch: Sequence[NewDelivery]) -> list[Appended]:
    """Append deliveries inside the caller's write transaction (BEGIN IMMEDIATE)."""
    seq, previous = head_hash(conn)
    # One query for every key in the batch, one executemany for every row: each SQLite
    # call gives up the GIL and must win it back from the busy event loop, so calls per
    # batch, not per row, keep the writer quick.
    first_seen = _first_seqs(conn, list({delivery.event_key for delivery in batch}))
    rows, results, _ = number_batch(seq, previous, batch, first_seen)
    insert_many(conn, _INSERT_DELIVERY, rows)
    return results


def append_stored(conn: sqlite3.Connection, rows: Sequence[StoredRow]) -> None:
    """Append rows copied from another log, unchanged, inside the caller's write transaction.

    They must continue this log: the next seq, each hash chained to the one before.
    """
    seq, previous = head_hash(conn)
    for row in rows:
        check_continues(seq, previous, row)
        seq, previous = row.seq, row.row_hash
    insert_many(conn, _INSERT_DELIVERY, [stored_form(row.content, row.row_hash) for row in rows])


def read_after(conn: sqlite3.Connection, after: int, limit: int) -> list[LoggedDelivery]:
    """Up to `limit` deliveries with seq > `after` (and seq >= 1), in log order, gap-free.

    Raises LogNotIntact at a missing seq: `projector verify` proves rows 1..head only up to
    a gap, so the projectors never fold a row past one.
    """
    start = max(after, 0)
    rows = conn.execute(
        f"SELECT {LOGGED_COLUMNS} FROM deliveries WHERE seq > ? ORDER BY seq LIMIT ?",
        (start, limit),
    ).fetchall()
    return logged_deliveries(rows, start)


def read_seqs(conn: sqlite3.Connection, seqs: Sequence[int]) -> list[LoggedDelivery]:
    """The deliveries with these seqs (at most 10,000 at once), in log order."""
    rows = conn.execute(
        f"SELECT {LOGGED_COLUMNS} FROM deliveries WHERE seq IN ({', '.join('?' * len(seqs))})"
        " ORDER BY seq",
        list(seqs),
    ).fetchall()
    return [logged_delivery(row) for row in rows]


def path_of(conn: sqlite3.Connection) -> Path:
    """The file `conn` has open as its main database."""
    return Path(conn.execute("PRAGMA database_list").fetchone()[2])

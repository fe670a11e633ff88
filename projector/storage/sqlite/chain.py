"""The hash chain of a SQLite log: read its rows, walk them, find gaps."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from projector.integrity import (
    GENESIS_HASH,
    HASHED_COLUMNS,
    ChainReport,
    Value,
    holds_only_the_chain,
    missing_row,
    row_outside_the_chain,
    walk,
)
from projector.storage.compact import hex_of
from projector.storage.rows import StoredRow, logical_form


def hashed_rows(
    conn: sqlite3.Connection, chunk: int = 5000
) -> Iterator[tuple[int, tuple[Value, ...], str]]:
    """(seq, hashed columns, stored hash) in seq order, a chunk at a time: flat memory."""
    after = 0
    while rows := rows_after(conn, after, chunk):
        for row in rows:
            yield row.seq, row.content, row.row_hash
        after = rows[-1].seq


_STORED_COLUMNS = ", ".join((*HASHED_COLUMNS, "row_hash"))


def rows_after(conn: sqlite3.Connection, after: int, limit: int) -> list[StoredRow]:
    """Up to `limit` rows with seq > `after`, their logical content and hash."""
    rows = conn.execute(
        f"SELECT {_STORED_COLUMNS} FROM deliveries WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, limit),
    ).fetchall()
    return [logical_form(row) for row in rows]


def verify_chain(conn: sqlite3.Connection, chunk: int = 5000) -> ChainReport:
    """Walk the whole log; report the first row breaking the sequence or the chain.

    The walk and the count of rows run in one read transaction (one snapshot), so rows
    appended meanwhile by a running server are neither walked nor counted.
    """
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        report = _walk(conn, chunk)
        return _outside_the_chain(conn, report) if report.intact else report
    finally:
        if own:
            conn.execute("COMMIT")


def _walk(conn: sqlite3.Connection, chunk: int) -> ChainReport:
    return walk(hashed_rows(conn, chunk))


def _outside_the_chain(conn: sqlite3.Connection, walked: ChainReport) -> ChainReport:
    """`walked` (intact), or the first row the walk of seq 1.. never reached (seq 0 or less)."""
    # The walk starts at seq 1, so a row below it (written with the guards dropped, or into a
    # log created before the CHECK on seq) would go unseen: the table must hold the walk alone.
    count, lowest, highest = conn.execute(
        "SELECT count(*), min(seq), max(seq) FROM deliveries"
    ).fetchone()
    if holds_only_the_chain(walked, count, lowest, highest):
        return walked
    seq = conn.execute(
        "SELECT seq FROM deliveries WHERE seq < 1 OR seq > ? ORDER BY seq LIMIT 1",
        (walked.head_seq,),
    ).fetchone()[0]
    return row_outside_the_chain(walked, count, seq)


def head_hash(conn: sqlite3.Connection) -> tuple[int, str]:
    """The last seq and its stored hash; (0, genesis) for an empty log."""
    row = conn.execute("SELECT seq, row_hash FROM deliveries ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, GENESIS_HASH) if row is None else (int(row[0]), hex_of(row[1]))


def check_without_gaps(conn: sqlite3.Connection, head: int) -> None:
    """Raise LogNotIntact unless seq 1..`head` are all there (a count; a search only if not)."""
    (count,) = conn.execute(
        "SELECT count(*) FROM deliveries WHERE seq BETWEEN 1 AND ?", (head,)
    ).fetchone()
    if count == head:
        return
    # The first missing seq: 1, or one past the first row whose successor is missing.
    (first,) = conn.execute(
        "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM deliveries WHERE seq = 1) THEN 1 ELSE"
        " (SELECT min(seq) + 1 FROM deliveries AS d WHERE seq BETWEEN 1 AND ?"
        " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE seq = d.seq + 1)) END",
        (head,),
    ).fetchone()
    (found,) = conn.execute("SELECT min(seq) FROM deliveries WHERE seq > ?", (first,)).fetchone()
    raise missing_row(first, found)

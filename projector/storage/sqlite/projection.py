"""Runs the folds over the log: in the commit that appends, and catch-up from the log."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import structlog

from projector.readmodels import READ_MODELS, Changes, FoldError, ReadModel, read_changes
from projector.storage.port import ProjectionStatus
from projector.storage.queries import PROJECTIONS_QUERY
from projector.storage.sqlite import log, outbox, tables

logger = structlog.get_logger("projector.projection")

EMPTY: Mapping[int, log.Committed] = MappingProxyType({})

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS projections (
    name TEXT PRIMARY KEY, version INTEGER NOT NULL, position INTEGER NOT NULL,
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS projection_errors (
    name TEXT NOT NULL, generation INTEGER NOT NULL, seq INTEGER NOT NULL, error TEXT NOT NULL,
    PRIMARY KEY (name, generation, seq)
);
CREATE TABLE IF NOT EXISTS rebuild_claims (generation INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS rebuilds (generation INTEGER PRIMARY KEY, finished_at TEXT NOT NULL)
"""


def prepare(conn: sqlite3.Connection) -> list[str]:
    """Create missing bookkeeping; returns the projections whose version changed (or new)."""
    for statement in _BOOKKEEPING.split(";\n"):
        conn.execute(statement)
    # The alert outbox's tables too (empty until alerting is enabled): every database with
    # projections has them, so GET /v1/projections can always read them.
    outbox.prepare(conn)
    stale = []
    for model in READ_MODELS:
        row = conn.execute(
            "SELECT version FROM projections WHERE name = ?", (model.name,)
        ).fetchone()
        if row is None or row[0] != model.version:
            stale.append(model.name)
    return stale


# Every projection's position and generation: they change whenever a read model does.
PROJECTION_STATES_SQL = "SELECT name, position, generation FROM projections ORDER BY name"


def state_token(conn: sqlite3.Connection) -> tuple[tuple[str, int, int], ...]:
    """Every projection's position and generation: it changes whenever a read model does."""
    rows = conn.execute(PROJECTION_STATES_SQL)
    return tuple(rows.fetchall())


def statuses(conn: sqlite3.Connection) -> list[ProjectionStatus]:
    """Every projection's version, position and number of recorded fold errors."""
    rows = conn.execute(PROJECTIONS_QUERY).fetchall()
    return [ProjectionStatus(*row[:4]) for row in rows]


def fold_changes(
    conn: sqlite3.Connection,
    model: ReadModel[Any, Any],
    table: str,
    read: tuple[Changes, list[FoldError]],
    after: int = 0,
) -> list[FoldError]:
    """Fold into `table` the changes of this model's kind past `after`; returns the errors."""
    mine, parse_errors = model.changes_past(read, after)
    return parse_errors + tables.apply(conn, model, table, mine)


def record_errors(
    conn: sqlite3.Connection, name: str, generation: int, errors: Sequence[FoldError]
) -> None:
    if not errors:
        return  # every SQLite call gives up the GIL and waits to win it back: skip this one
    for error in errors:
        logger.error("fold_failed", projection=name, seq=error.seq, error=error.error)
    conn.executemany(
        "INSERT OR REPLACE INTO projection_errors (name, generation, seq, error)"
        " VALUES (?, ?, ?, ?)",
        [(name, generation, e.seq, e.error) for e in errors],
    )


def _known_changes(
    known: Mapping[int, log.Committed], start: int, end: int
) -> tuple[Changes, list[FoldError]]:
    """The changes of seqs start+1..end, as the write lane committed them: no log read."""
    changes: Changes = []
    for seq in range(start + 1, end + 1):
        change = known[seq].change
        if change is not None:  # duplicates included, as read_changes folds them
            changes.append((seq, change))
    return changes, []


def catch_up_batch(
    conn: sqlite3.Connection, limit: int = 500, known: Mapping[int, log.Committed] = EMPTY
) -> int:
    """Fold up to `limit` new deliveries into every projection; returns how many were read.

    `known` holds what this process's write lane committed, by seq; where it covers the
    batch, the projector folds those changes instead of reading and parsing the bodies.
    """
    with log.relaxed_sync(conn):
        return _catch_up(conn, limit, known)


def _catch_up(conn: sqlite3.Connection, limit: int, known: Mapping[int, log.Committed]) -> int:
    with log.transaction(conn):
        # Positions are read inside the transaction: a concurrent `projector rebuild` may
        # have swapped in new tables and positions since the last batch.
        positions = _positions(conn)
        # Never below 0: the log proven by `projector verify` starts at seq 1.
        start = max(0, int(min(position for position, _ in positions.values())))
        end = min(log.head(conn), start + limit)
        if all(seq in known for seq in range(start + 1, end + 1)):
            read = _known_changes(known, start, end)
        else:  # appended by another process, or before a restart: read and parse the log
            read = read_changes(log.read_after(conn, start, end - start))
        _fold_range(conn, positions, end, read)
    return end - start


def project_appended(conn: sqlite3.Connection, known: Mapping[int, log.Committed]) -> bool:
    """Fold deliveries just appended in the caller's transaction; False if it cannot.

    It folds only when every projection stands right before them; otherwise (a backlog, a
    rebuild's swap) catch_up_batch folds them later, from the log.
    """
    positions = _positions(conn)
    first, last = min(known), max(known)
    if any(position != first - 1 for position, _ in positions.values()):
        return False
    _fold_range(conn, positions, last, _known_changes(known, first - 1, last))
    return True


def _positions(conn: sqlite3.Connection) -> dict[str, tuple[int, int]]:
    rows = conn.execute("SELECT name, position, generation FROM projections")
    return {name: (position, generation) for name, position, generation in rows}


def _fold_range(
    conn: sqlite3.Connection,
    positions: Mapping[str, tuple[int, int]],
    end: int,
    read: tuple[Changes, list[FoldError]],
) -> None:
    """Fold `read` (changes up to seq `end`) into each projection past its position."""
    moved = []
    for model in READ_MODELS:
        position, generation = positions[model.name]
        if position >= end:
            continue
        errors = fold_changes(conn, model, model.table, read, after=position)
        record_errors(conn, model.name, generation, errors)
        moved.append(model.name)
    # The checkpoints move in the same transaction as the rows they cover.
    if moved:
        conn.execute(
            f"UPDATE projections SET position = ? WHERE name IN ({', '.join('?' * len(moved))})",
            (end, *moved),
        )

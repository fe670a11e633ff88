"""The alert outbox on SQLite: the alert projector's tables, run on the write lane."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import partial
from typing import Any

import structlog

from projector import alerts
from projector.readmodels import READ_MODELS, ReadModel, read_changes
from projector.storage import outbox_sql as sql
from projector.storage.port import FailedAttempt, OutboxRow
from projector.storage.sqlite import log, tables
from projector.storage.sqlite.writer import WriteLane

logger = structlog.get_logger("projector.storage.sqlite.outbox")

_TABLES = """
CREATE TABLE IF NOT EXISTS alert_checkpoint (
    one_row INTEGER PRIMARY KEY CHECK (one_row = 1), position INTEGER NOT NULL,
    quiet_until INTEGER NOT NULL, fold_versions TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_outbox (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, fields TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL, next_attempt_at REAL NOT NULL, sent_at REAL, failed_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS alert_outbox_by_status ON alert_outbox (status, seq);
CREATE INDEX IF NOT EXISTS alert_outbox_by_sent_at ON alert_outbox (sent_at)
    WHERE sent_at IS NOT NULL
"""


def prepare(conn: sqlite3.Connection) -> None:
    """Create the alert tables if missing (empty: alerting starts when first enabled)."""
    for statement in _TABLES.split(";\n"):
        conn.execute(statement)
    for model in READ_MODELS:
        columns = ", ".join(f"{c} TEXT" for c in model.columns)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {sql.state_table(model)} ({columns},"
            f" PRIMARY KEY ({', '.join(model.key_columns)})) WITHOUT ROWID"
        )


def derive(conn: sqlite3.Connection, limit: int) -> int:
    """Fold up to `limit` deliveries into the alert state, queue alerts, move the checkpoint."""
    # The outbox holds nothing the log does not: a power cut that undoes a commit here
    # undoes its checkpoint too, and the same alerts are derived again.
    with log.relaxed_sync(conn), log.transaction(conn):
        checkpoint = conn.execute(sql.CHECKPOINT).fetchone()
        if checkpoint is None or checkpoint[2] != sql.FOLD_VERSIONS:
            position, quiet_until = _seed(conn, checkpoint)
        else:
            position, quiet_until = int(checkpoint[0]), int(checkpoint[1])
        deliveries = log.read_after(conn, position, limit)
        if not deliveries:
            return 0
        changes, _ = read_changes(deliveries)  # parse errors: the read models record them
        raised: list[alerts.Alert] = []
        for model in READ_MODELS:
            mine = [(seq, c) for seq, c in changes if isinstance(c, model.change_type)]
            raised += _fold(conn, model, mine)
        rows = sql.queued(sorted(raised, key=lambda alert: alert.seq), quiet_until)
        if rows:
            conn.executemany(sql.QUEUE, rows)
        conn.execute(sql.MOVE_CHECKPOINT, (deliveries[-1].seq,))
    return len(deliveries)


def _fold(
    conn: sqlite3.Connection, model: ReadModel[Any, Any], changes: list[tuple[int, Any]]
) -> list[alerts.Alert]:
    if not changes:
        return []
    table = sql.state_table(model)
    states = tables.load_states(conn, model, table, model.keys_of(changes))
    dirty, raised = alerts.derive(model, states, changes)
    conn.executemany(sql.upsert_sql(model), [model.to_row(state) for state in dirty.values()])
    return raised


def _seed(conn: sqlite3.Connection, checkpoint: tuple[Any, ...] | None) -> tuple[int, int]:
    """Start (or, after a fold changed, restart) from the read models as they stand.

    Deliveries up to the log head are then folded without alerting: history is not news.
    Returns the new position and the seq up to which nothing alerts.
    """
    for model in READ_MODELS:
        for statement in sql.seed_sql(model):
            conn.execute(statement)
    (position,) = conn.execute("SELECT coalesce(min(position), 0) FROM projections").fetchone()
    head = log.head(conn)
    quiet_until = head if checkpoint is None else int(checkpoint[1])
    conn.execute(sql.SET_CHECKPOINT, (1, int(position), quiet_until, sql.FOLD_VERSIONS))
    logger.info("alerts_seeded", position=position, quiet_until=quiet_until)
    return int(position), quiet_until


def _pending(conn: sqlite3.Connection, limit: int) -> list[OutboxRow]:
    rows = conn.execute(sql.PENDING_ROWS, (sql.PENDING, limit)).fetchall()
    return [sql.outbox_row(row) for row in rows]


def _sent_since(conn: sqlite3.Connection, since: float) -> list[float]:
    return [float(at) for (at,) in conn.execute(sql.SENT_SINCE, (since,)).fetchall()]


def _update(conn: sqlite3.Connection, statement: str, rows: list[tuple[Any, ...]]) -> None:
    if rows:
        with log.relaxed_sync(conn), log.transaction(conn):
            conn.executemany(statement, rows)


class SqliteOutbox:
    """port.AlertOutbox on the write lane: its writes take turns with the appends."""

    def __init__(self, lane: WriteLane) -> None:
        self._lane = lane

    async def derive(self, limit: int) -> int:
        return await self._lane.run(partial(derive, limit=limit))

    async def pending(self, limit: int) -> list[OutboxRow]:
        return await self._lane.run(partial(_pending, limit=limit))

    async def sent_since(self, since: float) -> list[float]:
        return await self._lane.run(partial(_sent_since, since=since))

    async def mark_sent(self, seqs: Sequence[int], at: float) -> None:
        rows = sql.sent_rows(seqs, at)
        await self._lane.run(partial(_update, statement=sql.MARK_SENT, rows=rows))

    async def mark_failed(self, attempts: Sequence[FailedAttempt], at: float) -> None:
        rows = sql.failed_rows(attempts, at)
        await self._lane.run(partial(_update, statement=sql.MARK_FAILED, rows=rows))

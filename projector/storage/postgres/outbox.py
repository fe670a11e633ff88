"""The alert outbox on PostgreSQL: derived under the projector lease, on a connection of its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog

from projector import alerts
from projector.readmodels import READ_MODELS, ReadModel, read_changes
from projector.storage import outbox_sql as sql
from projector.storage.location import PostgresUrl
from projector.storage.port import FailedAttempt, OutboxRow
from projector.storage.postgres import folding, lease
from projector.storage.postgres.connect import (
    CONNECTION_ERRORS,
    Connection,
    close_quietly,
    connect,
    unavailable,
)
from projector.storage.postgres.projector import PostgresProjector

logger = structlog.get_logger("projector.storage.postgres.outbox")


def _pg(statement: str) -> str:
    # The shared statements hold no other `?` and no `%`, so this replacement is exact.
    return statement.replace("?", "%s")


class PostgresOutbox:
    """port.AlertOutbox on PostgreSQL; only the projector lease's holder derives."""

    def __init__(self, url: PostgresUrl, projector: PostgresProjector) -> None:
        self._url = url
        self._projector = projector
        self._conn: Connection | None = None

    async def derive(self, limit: int) -> int:
        held = self._projector.lease
        if held is None:
            return 0
        try:
            conn = await self._connection()
            async with conn.transaction():
                # The fence: a process that lost the lease derives (so sends) nothing, and
                # no other process can take the lease before this transaction commits.
                if not await lease.hold(conn, *held):
                    return 0
                return await self._derive(conn, limit)
        except CONNECTION_ERRORS as exc:
            await self._drop()
            raise unavailable(self._url, exc, "deriving alerts from the log") from None

    async def _derive(self, conn: Connection, limit: int) -> int:
        cur = await conn.execute(sql.CHECKPOINT + " FOR UPDATE")
        checkpoint = await cur.fetchone()
        if checkpoint is None or checkpoint[2] != sql.FOLD_VERSIONS:
            position, quiet_until = await self._seed(conn, checkpoint)
        else:
            position, quiet_until = int(checkpoint[0]), int(checkpoint[1])
        deliveries = await folding.read_after(conn, position, limit)
        if not deliveries:
            return 0
        changes, _ = read_changes(deliveries)  # parse errors: the read models record them
        raised: list[alerts.Alert] = []
        for model in READ_MODELS:
            mine = [(seq, c) for seq, c in changes if isinstance(c, model.change_type)]
            raised += await self._fold(conn, model, mine)
        rows = sql.queued(sorted(raised, key=lambda alert: alert.seq), quiet_until)
        async with conn.cursor() as cur:
            if rows:
                await cur.executemany(_pg(sql.QUEUE), rows)
            await cur.execute(_pg(sql.MOVE_CHECKPOINT), (deliveries[-1].seq,))
        return len(deliveries)

    async def _fold(
        self, conn: Connection, model: ReadModel[Any, Any], changes: list[tuple[int, Any]]
    ) -> list[alerts.Alert]:
        if not changes:
            return []
        table = sql.state_table(model)
        states = await folding.load_states(conn, model, table, model.keys_of(changes))
        dirty, raised = alerts.derive(model, states, changes)
        await folding.save_states(conn, model, table, list(dirty.values()))
        return raised

    async def _seed(self, conn: Connection, checkpoint: tuple[Any, ...] | None) -> tuple[int, int]:
        """Start from the read models as they stand; fold up to the head without alerting."""
        # Locked: a rebuild's swap or a fold cannot move the read models while they are copied.
        await conn.execute("SELECT name FROM projections FOR UPDATE")
        cur = await conn.execute("SELECT coalesce(min(position), 0) FROM projections")
        row = await cur.fetchone()
        position = 0 if row is None else int(row[0])
        for model in READ_MODELS:
            for statement in sql.seed_sql(model):
                await conn.execute(statement)
        cur = await conn.execute("SELECT seq FROM log_head")
        head_row = await cur.fetchone()
        head = 0 if head_row is None else int(head_row[0])
        quiet_until = head if checkpoint is None else int(checkpoint[1])
        await conn.execute(_pg(sql.SET_CHECKPOINT), (1, position, quiet_until, sql.FOLD_VERSIONS))
        logger.info("alerts_seeded", position=position, quiet_until=quiet_until)
        return position, quiet_until

    async def pending(self, limit: int) -> list[OutboxRow]:
        rows = await self._fetch(sql.PENDING_ROWS, (sql.PENDING, limit), "reading alerts")
        return [sql.outbox_row(row) for row in rows]

    async def sent_since(self, since: float) -> list[float]:
        rows = await self._fetch(sql.SENT_SINCE, (since,), "reading sent alerts")
        return [float(at) for (at,) in rows]

    async def mark_sent(self, seqs: Sequence[int], at: float) -> None:
        await self._update(sql.MARK_SENT, sql.sent_rows(seqs, at))

    async def mark_failed(self, attempts: Sequence[FailedAttempt], at: float) -> None:
        await self._update(sql.MARK_FAILED, sql.failed_rows(attempts, at))

    async def close(self) -> None:
        await close_quietly(self._conn)
        self._conn = None

    async def _fetch(
        self, statement: str, params: Sequence[Any], doing: str
    ) -> list[tuple[Any, ...]]:
        try:
            conn = await self._connection()
            cur = await conn.execute(_pg(statement), params)
            return await cur.fetchall()
        except CONNECTION_ERRORS as exc:
            await self._drop()
            raise unavailable(self._url, exc, doing) from None

    async def _update(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        try:
            conn = await self._connection()
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(_pg(statement), rows)
        except CONNECTION_ERRORS as exc:
            await self._drop()
            raise unavailable(self._url, exc, "recording alert deliveries") from None

    async def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = await connect(self._url)
        return self._conn

    async def _drop(self) -> None:
        if self._conn is not None and (self._conn.broken or self._conn.closed):
            await close_quietly(self._conn)
            self._conn = None

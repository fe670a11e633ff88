"""What the CLI does to a PostgreSQL log outside the service: verify, rebuild, copy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg

from projector import integrity
from projector.integrity import GENESIS_HASH, HASHED_COLUMNS, ChainReport, Value, row_hash
from projector.storage.compact import hex_of
from projector.storage.location import PostgresUrl
from projector.storage.port import ProjectionStatus, Verification
from projector.storage.postgres import rebuild, schema
from projector.storage.postgres.appends import (
    HEAD_FOR_UPDATE,
    INSERT_ROWS,
    LOG_CHANNEL,
    as_columns,
    stored_rows_for_postgres,
)
from projector.storage.postgres.connect import Connection, connect, connection_parameters
from projector.storage.queries import PROJECTIONS_QUERY
from projector.storage.rows import RowsDoNotContinue, StoredRow, logical_form

_STORED_COLUMNS = ", ".join((*HASHED_COLUMNS, "row_hash"))
VERIFY_CHUNK = 5000


def stored_row(row: Sequence[Any]) -> StoredRow:
    """A deliveries row (HASHED_COLUMNS, row_hash) as the values `integrity.row_hash` hashes."""
    return logical_form(row)


def _walk_snapshot(url: PostgresUrl) -> tuple[ChainReport, int, str]:
    """Walk the chain and count the rows in one REPEATABLE READ snapshot (a thread's work).

    Returns the report, the number of rows and the server's version.
    """
    with psycopg.connect(url.url, **connection_parameters(url)) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        version = conn.info.parameter_status("server_version") or "unknown"
        with conn.transaction():
            # A named (server-side) cursor streams the rows: memory stays flat on any log.
            with conn.cursor(name="refold_verify") as cur:
                cur.itersize = VERIFY_CHUNK
                cur.execute(f"SELECT {_STORED_COLUMNS} FROM deliveries ORDER BY seq")
                report = integrity.walk(_hashed(cur))
            row = conn.execute("SELECT count(*), min(seq), max(seq) FROM deliveries").fetchone()
            assert row is not None
            count, lowest, highest = row
            # The walk starts at seq 1: a row below it, or past a gap, is found by counting.
            if not report.intact or integrity.holds_only_the_chain(report, count, lowest, highest):
                return report, count, version
            outside = conn.execute(
                "SELECT seq FROM deliveries WHERE seq < 1 OR seq > %s ORDER BY seq LIMIT 1",
                (report.head_seq,),
            ).fetchone()
            assert outside is not None
            return integrity.row_outside_the_chain(report, count, int(outside[0])), count, version


def _hashed(rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[int, tuple[Value, ...], str]]:
    for row in rows:
        stored = stored_row(row)
        yield stored.seq, stored.content, stored.row_hash


class PostgresMaintenance:
    """One connection to a PostgreSQL log, for the CLI's verify, rebuild, statuses and copy."""

    def __init__(self, url: PostgresUrl, conn: Connection) -> None:
        self.description = str(url)
        self._url = url
        self._conn = conn

    async def head(self) -> tuple[int, str]:
        """The last seq and its stored hash; (0, genesis hash) for an empty log."""
        cur = await self._conn.execute(
            "SELECT seq, row_hash FROM deliveries ORDER BY seq DESC LIMIT 1"
        )
        row = await cur.fetchone()
        return (0, GENESIS_HASH) if row is None else (int(row[0]), hex_of(row[1]))

    async def verify(self) -> Verification:
        """Walk the hash chain in one snapshot; the engine line names server and row count."""
        report, count, version = await asyncio.to_thread(_walk_snapshot, self._url)
        cur = await self._conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'deliveries'::regclass"
            " AND NOT tgisinternal AND tgenabled <> 'D'"
        )
        row = await cur.fetchone()
        triggers = 0 if row is None else int(row[0])
        guards = "in place" if triggers >= 2 else "MISSING (the log can be altered)"
        checks = (
            f"postgresql: {self._url}, server {version}, {count} rows",
            f"postgresql append-only triggers: {guards}",
        )
        return Verification(report, checks, checks_passed=triggers >= 2)

    async def rebuild(self) -> int:
        """Replay the log into fresh read models and swap them in; returns the head."""
        return await rebuild.rebuild(self._conn)

    async def statuses(self) -> list[ProjectionStatus]:
        cur = await self._conn.execute(PROJECTIONS_QUERY)
        return [ProjectionStatus(n, v, int(p), int(e)) for n, v, p, e, _ in await cur.fetchall()]

    async def stored_rows(self, after: int, limit: int) -> list[StoredRow]:
        """Up to `limit` rows with seq > `after`, exactly as stored, in seq order."""
        cur = await self._conn.execute(
            f"SELECT {_STORED_COLUMNS} FROM deliveries WHERE seq > %s ORDER BY seq LIMIT %s",
            (after, limit),
        )
        return [stored_row(row) for row in await cur.fetchall()]

    async def append_stored(self, rows: Sequence[StoredRow]) -> None:
        """Append rows copied from another log, unchanged; they must continue this log's chain."""
        if not rows:
            return
        async with self._conn.transaction():
            cur = await self._conn.execute(HEAD_FOR_UPDATE)
            head = await cur.fetchone()
            assert head is not None, "log_head holds exactly one row (created with the schema)"
            seq, previous = int(head[0]), str(head[1])
            for row in rows:
                seq += 1
                if row.seq != seq:
                    raise RowsDoNotContinue(
                        f"the copied row with seq {row.seq} does not continue this log, whose "
                        f"next seq is {seq}: copy into an empty database, or resume from seq {seq}"
                    )
                expected = row_hash(previous, row.content)
                if row.row_hash != expected:
                    raise RowsDoNotContinue(
                        f"the copied row with seq {seq} carries hash {row.row_hash}, but its "
                        f"content chained to this log's previous row hashes to {expected}: the "
                        "source was altered or is another log; run `projector verify` on it"
                    )
                previous = expected
            await self._conn.execute(INSERT_ROWS, as_columns(stored_rows_for_postgres(rows)))
            await self._conn.execute("UPDATE log_head SET seq = %s, row_hash = %s", (seq, previous))
            await self._conn.execute("SELECT pg_notify(%s, %s)", (LOG_CHANNEL, str(seq)))

    async def close(self) -> None:
        await self._conn.close()


async def open_maintenance(
    url: PostgresUrl, *, create: bool = False, readonly: bool = False
) -> PostgresMaintenance:
    """Connect for the CLI; `create` makes or upgrades the schema (a copy's destination).

    `readonly` (verify, a copy's source) makes the session refuse every write.
    """
    conn = await connect(url)
    try:
        if create:
            await schema.migrate(conn)
        else:
            await schema.check_version(conn)  # nothing but `serve` migrates a log in use
        if readonly:
            await conn.execute("SET default_transaction_read_only = on")
    except BaseException:
        await conn.close()
        raise
    return PostgresMaintenance(url, conn)

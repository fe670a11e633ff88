"""PostgresStorage: the log, the projector and the reads of one PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog
from psycopg_pool import AsyncConnectionPool

from projector.storage.location import PostgresUrl
from projector.storage.postgres import rebuild, schema
from projector.storage.postgres.connect import (
    CONNECT_TIMEOUT_SECONDS,
    CONNECTION_ERRORS,
    Connection,
    close_quietly,
    connect,
    read_pool,
    unavailable,
)
from projector.storage.postgres.log import PostgresLog
from projector.storage.postgres.outbox import PostgresOutbox
from projector.storage.postgres.projector import LEASE_SECONDS, PostgresProjector
from projector.storage.queries import POSTGRES, SqlReads

logger = structlog.get_logger("projector.storage.postgres.adapter")


class PostgresReads:
    """Runs the shared read queries (written with `?` placeholders) on the reader pool."""

    def __init__(self, url: PostgresUrl, pool: AsyncConnectionPool[Connection]) -> None:
        self._url = url
        self._pool = pool

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of `sql` run with `params`; its `?` placeholders become psycopg's `%s`."""
        # The shared queries hold no other `?` and no `%`, so this replacement is exact.
        query = sql.replace("?", "%s")
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, params)
                return await cur.fetchall()
        except CONNECTION_ERRORS as exc:
            raise unavailable(self._url, exc, "reading") from None


class PostgresStorage:
    """One PostgreSQL database, shared by any number of service processes."""

    # Other processes' folds arrive by LISTEN/NOTIFY; their projection is never in the
    # commit that acknowledged a delivery, so there is no count to follow.
    shared_changes = None

    def __init__(
        self,
        url: PostgresUrl,
        *,
        max_pending: int,
        on_read_models_changed: Callable[[], None] = lambda: None,
        on_batch: Callable[[int], None] = lambda size: None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.description = str(url)
        self._url = url
        self._pool = read_pool(url)
        self.projector = PostgresProjector(
            url, self._pool, lease_seconds=lease_seconds, on_folded_elsewhere=on_read_models_changed
        )
        # A local commit wakes this process's projector at once; others hear the NOTIFY.
        self.log = PostgresLog(
            url, max_pending=max_pending, on_batch=on_batch, on_commit=self.projector.wake
        )
        self.reads = SqlReads(PostgresReads(url, self._pool).fetch, POSTGRES)
        self.alerts = PostgresOutbox(url, self.projector)

    async def open(self) -> None:
        """Connect, create or migrate the schema, rebuild projections whose version changed."""
        logger.info("storage_opening", database=self.description)
        conn = await connect(self._url)
        try:
            await schema.migrate(conn)
            await rebuild.rebuild_stale(conn)
        except CONNECTION_ERRORS as exc:
            raise unavailable(self._url, exc, "preparing the schema") from None
        finally:
            await close_quietly(conn)
        try:
            await self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS * 2)
        except CONNECTION_ERRORS as exc:
            await self._pool.close()
            raise unavailable(self._url, exc, "opening the reader connections") from None
        try:
            await self.log.open()
        except BaseException:
            await self._pool.close()
            raise

    async def close(self) -> None:
        """Commit what is queued, then close every connection."""
        await self.log.close()
        await self.alerts.close()
        await self.projector.close()
        await self._pool.close()


@asynccontextmanager
async def postgres_reads(url: PostgresUrl) -> AsyncIterator[SqlReads]:
    """The API's reads on a pool of their own (a CLI command's), closed after."""
    pool = read_pool(url, size=1)
    try:
        await pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS * 2)
    except CONNECTION_ERRORS as exc:
        raise unavailable(url, exc, "opening a reader connection") from None
    try:
        conn = await connect(url)
        try:
            await schema.check_version(conn)
        finally:
            await close_quietly(conn)
        yield SqlReads(PostgresReads(url, pool).fetch, POSTGRES)
    finally:
        await pool.close()

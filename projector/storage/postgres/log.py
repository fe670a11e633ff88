"""The event log on PostgreSQL: concurrent appends share one transaction (group commit)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from projector.storage.location import PostgresUrl
from projector.storage.port import CommitOutcome, Overloaded, StorageUnavailable
from projector.storage.postgres.appends import append_rows
from projector.storage.postgres.connect import (
    Connection,
    close_quietly,
    connect,
    unavailable,
)
from projector.storage.rows import Appended, NewDelivery, probe_delivery

logger = structlog.get_logger("projector.storage.postgres.log")

# Enough rows to amortise one commit's WAL flush well; few enough to keep its latency short.
MAX_BATCH = 256
# A batch (connecting included) that takes longer fails: its requests answer 503, not hang.
BATCH_SECONDS = 10.0


@dataclass(frozen=True)
class _Append:
    delivery: NewDelivery
    future: asyncio.Future[Appended]


@dataclass(frozen=True)
class _Probe:
    future: asyncio.Future[None]


_STOP = object()  # the last item the appender takes: what was queued before it is committed


class PostgresLog:
    """Appends wait in a queue; one task commits everything waiting as one transaction.

    Only after the commit does a caller's future resolve: a 200 means the row is durable.
    Any database error fails the whole batch with StorageUnavailable and drops the
    connection; the next batch reconnects, so the service recovers when the server does.
    """

    def __init__(
        self,
        url: PostgresUrl,
        *,
        max_pending: int,
        on_batch: Callable[[int], None] = lambda size: None,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._url = url
        self._max_pending = max_pending
        self.on_batch = on_batch  # told each committed batch's size, for the metrics
        self.on_commit = on_commit  # told after each commit: wakes this process's projector
        self._queue: asyncio.Queue[_Append | _Probe | object] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._conn: Connection | None = None
        self._pending = 0
        self._closing = False
        self._last_commit: CommitOutcome | None = None
        self._log = logger.bind(database=str(url))

    @property
    def pending(self) -> int:
        """Deliveries waiting for a commit."""
        return self._pending

    @property
    def last_commit(self) -> CommitOutcome | None:
        """The last batch's outcome, for readiness."""
        return self._last_commit

    async def open(self) -> None:
        """Connect, then start the appender task."""
        self._conn = await connect(self._url)
        self._task = asyncio.create_task(self._serve(), name="projector-appender")

    async def append(self, delivery: NewDelivery) -> Appended:
        """Append one delivery; returns once its commit is durable."""
        if self._closing or self._task is None or self._task.done():
            raise StorageUnavailable("the event log is closed: the service is shutting down")
        if self._pending >= self._max_pending:
            raise Overloaded(f"{self._pending} deliveries are waiting for the event log")
        future: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
        self._pending += 1
        self._queue.put_nowait(_Append(delivery, future))
        return await future

    async def probe_write(self) -> None:
        """Append a row as the receiver would, in turn with the appends, then roll it back."""
        if self._closing or self._task is None or self._task.done():
            raise StorageUnavailable("the event log is closed: the service is shutting down")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Probe(future))
        await future

    async def close(self) -> None:
        """Commit what is queued, then close the connection."""
        self._closing = True  # appends from here on are refused, so the queue drains
        if self._task is not None and not self._task.done():
            self._queue.put_nowait(_STOP)
            await self._task
        await close_quietly(self._conn)
        self._conn = None

    # --- the appender task ------------------------------------------------------------------

    async def _serve(self) -> None:
        item = await self._queue.get()
        while item is not _STOP:
            if isinstance(item, _Probe):
                await self._probe(item)
                item = await self._queue.get()
            elif isinstance(item, _Append):
                batch = [item]
                taken = self._gather(batch)
                await self._commit(batch)
                item = await self._queue.get() if taken is None else taken

    def _gather(self, batch: list[_Append]) -> object | None:
        """Add the appends queued behind `batch[0]`; returns another item taken, if any."""
        while len(batch) < MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
            if not isinstance(item, _Append):
                return item
            batch.append(item)
        return None

    async def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = await connect(self._url)
            self._log.info("log_reconnected")
        return self._conn

    async def _commit(self, batch: list[_Append]) -> None:
        try:
            async with asyncio.timeout(BATCH_SECONDS):
                conn = await self._connection()
                async with conn.pipeline(), conn.transaction():
                    results = await append_rows(conn, [a.delivery for a in batch])
        except Exception as exc:  # of any kind: the batch fails, the appender goes on
            await self._failed(batch, exc)
            return
        self._pending -= len(batch)
        self._last_commit = CommitOutcome(time.monotonic(), succeeded=True)
        for append, result in zip(batch, results, strict=True):
            # A caller that went away still had its delivery stored; the sender will retry.
            if not append.future.done():
                append.future.set_result(result)
        self.on_batch(len(batch))
        self.on_commit()

    async def _failed(self, batch: list[_Append], exc: BaseException) -> None:
        # Whatever broke (server gone, lock timeout, disk full), the connection's state is
        # unknown now: drop it, and let the next batch start on a fresh one.
        await close_quietly(self._conn)
        self._conn = None
        error = exc if isinstance(exc, StorageUnavailable) else self._unavailable(exc)
        self._log.error("append_failed", deliveries=len(batch), error=str(error))
        self._pending -= len(batch)
        self._last_commit = CommitOutcome(time.monotonic(), succeeded=False)
        for append in batch:
            if not append.future.done():
                append.future.set_exception(error)

    def _unavailable(self, exc: BaseException) -> StorageUnavailable:
        if isinstance(exc, TimeoutError):
            return StorageUnavailable(
                f"PostgreSQL at {self._url} did not commit the batch within {BATCH_SECONDS:g} s;"
                " the delivery may or may not be stored, and the sender's retry is recorded as"
                " a duplicate if it was: check the server's load and locks (pg_stat_activity)"
            )
        return unavailable(self._url, exc, "appending to the event log")

    async def _probe(self, probe: _Probe) -> None:
        try:
            async with asyncio.timeout(BATCH_SECONDS):
                conn = await self._connection()
                async with conn.pipeline(), conn.transaction(force_rollback=True):
                    await append_rows(conn, [probe_delivery()])
        except Exception as exc:  # of any kind: the probe fails, the appender goes on
            await close_quietly(self._conn)
            self._conn = None
            error = exc if isinstance(exc, StorageUnavailable) else self._unavailable(exc)
            if not probe.future.done():
                probe.future.set_exception(error)
            return
        if not probe.future.done():
            probe.future.set_result(None)

"""The write lane: one thread, one connection, every write; concurrent appends share a commit."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import structlog

from projector import log

T = TypeVar("T")
logger = structlog.get_logger("projector.writer")

# Enough rows to amortise one fsync well; small enough to keep one commit's latency short.
MAX_BATCH = 256
MAX_COMMITTED = 20_000


class Overloaded(Exception):
    """More deliveries are waiting for the writer than the configured bound."""


class StorageUnavailable(Exception):
    """The log could not commit; nothing from that batch was stored."""


class WriteLane:
    """Serialises all writes on one SQLite connection in one thread.

    Appends wait in a queue; the lane takes everything waiting, commits it as one
    transaction with one fsync, and only then resolves each caller's future.
    """

    def __init__(self, path: Path, max_pending: int, on_commit: Callable[[], None]) -> None:
        self._path = path
        self._max_pending = max_pending
        self._on_commit = on_commit
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="projector-writer")
        self._queue: asyncio.Queue[tuple[log.NewDelivery, asyncio.Future[log.Appended]]] = (
            asyncio.Queue()
        )
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._committed: dict[int, log.Committed] = {}

    async def open(self) -> None:
        """Open the connection in the writer thread and start taking appends."""
        self._conn = await self._in_thread(lambda: log.connect(self._path))
        self._task = asyncio.create_task(self._commit_loop(), name="projector-writer")

    async def run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run `job(connection)` in the writer thread, in turn with the appends."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("the write lane is not open")
        return await self._in_thread(lambda: job(conn))

    async def append(self, delivery: log.NewDelivery) -> log.Appended:
        """Append one delivery; returns after its commit is durable."""
        if self._closing or self._task is None or self._task.done():
            raise StorageUnavailable("the write lane is closed")
        if self._queue.qsize() >= self._max_pending:
            raise Overloaded(f"{self._queue.qsize()} deliveries are waiting for the writer")
        future: asyncio.Future[log.Appended] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((delivery, future))
        return await future

    def take_committed(self) -> dict[int, log.Committed]:
        """What was committed since the last call, by seq, for the projector."""
        committed, self._committed = self._committed, {}
        return committed

    @property
    def pending(self) -> int:
        """Deliveries waiting for a commit."""
        return self._queue.qsize()

    async def close(self) -> None:
        """Commit what is queued, then stop the thread and close the connection."""
        self._closing = True  # appends from here on are refused, so the queue can drain
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._conn is not None:
            await self._in_thread(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    async def _in_thread(self, job: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)

    async def _commit_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)
            for _ in batch:
                self._queue.task_done()

    async def _commit(
        self, batch: list[tuple[log.NewDelivery, asyncio.Future[log.Appended]]]
    ) -> None:
        deliveries = [delivery for delivery, _ in batch]
        try:
            results = await self.run(lambda conn: log.append_batch(conn, deliveries))
        except Exception as exc:  # disk full, I/O error, lock timeout: all mean 503, retry later
            logger.error("append_failed", deliveries=len(batch), error=str(exc))
            for _, future in batch:
                if not future.done():
                    future.set_exception(StorageUnavailable(str(exc)))
            return
        for (delivery, future), result in zip(batch, results, strict=True):
            # A caller that went away still had its delivery stored; the sender will retry.
            if not future.done():
                future.set_result(result)
            # Bounded: if the projector falls far behind, it parses the rest from the log.
            if len(self._committed) < MAX_COMMITTED:
                self._committed[result.seq] = log.Committed(result.duplicate_of, delivery.change)
        self._on_commit()

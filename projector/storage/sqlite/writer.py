"""The write lane: one thread, one connection, every write; concurrent appends share a commit."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from projector.storage.port import CommitOutcome, Overloaded, StorageUnavailable
from projector.storage.rows import Appended, NewDelivery, probe_delivery
from projector.storage.sqlite import log

T = TypeVar("T")
logger = structlog.get_logger("projector.writer")

# Enough rows to amortise one fsync well; small enough to keep one commit's latency short.
MAX_BATCH = 256
MAX_COMMITTED = 20_000

# Folds deliveries appended in the current transaction into the read models; False when it
# leaves them to the projector (projection.project_appended).
ProjectAppended = Callable[[sqlite3.Connection, Mapping[int, log.Committed]], bool]


@dataclass(frozen=True)
class _Append:
    delivery: NewDelivery
    future: asyncio.Future[Appended]


@dataclass(frozen=True)
class _Job:
    run: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


_STOP = object()  # the last item the writer thread takes: it closes the connection and ends


class WriteLane:
    """Serialises all writes on one SQLite connection in one thread of its own.

    Appends and jobs wait in a queue. The thread takes every append waiting, commits them
    as one transaction with one fsync, hands the results to the event loop, and goes
    straight on to the next batch: the loop is not needed between commits. Only after the
    commit does a caller's future resolve. With `project`, the same transaction folds the
    batch into the read models too.
    """

    def __init__(
        self,
        path: Path,
        max_pending: int,
        on_commit: Callable[[bool], None],
        project: ProjectAppended | None = None,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._path = path
        self._max_pending = max_pending
        self._on_commit = on_commit  # told whether the commit folded its batch
        self._project = project
        self._on_batch = on_batch  # told each committed batch's size, for the metrics
        self.last_commit: CommitOutcome | None = None  # for readiness
        self._inbox: queue.SimpleQueue[_Append | _Job | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._pending = 0
        self._closing = False
        self._committed: dict[int, log.Committed] = {}

    async def open(self) -> None:
        """Start the thread; returns once it has opened its connection."""
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        opened: asyncio.Future[sqlite3.Connection] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._serve, args=(opened,), name="projector-writer", daemon=True
        )
        self._thread.start()
        await opened

    async def run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run `job(connection)` in the writer thread, in turn with the appends."""
        if self._loop is None or self._stopped is None or self._stopped.done():
            raise RuntimeError("the write lane is not open")
        future: asyncio.Future[T] = self._loop.create_future()
        self._inbox.put(_Job(job, future))
        return await future

    async def append(self, delivery: NewDelivery) -> Appended:
        """Append one delivery; returns after its commit is durable."""
        return await self.submit(delivery)

    def submit(self, delivery: NewDelivery) -> asyncio.Future[Appended]:
        """Queue one delivery; the future resolves after its commit is durable.

        `append` without a coroutine: the writer process calls it for every delivery a
        worker sends, and a task for each would cost its loop as much as the rest.
        """
        if self._closing or self._loop is None or self._stopped is None or self._stopped.done():
            raise StorageUnavailable("the write lane is closed")
        if self._pending >= self._max_pending:
            raise Overloaded(f"{self._pending} deliveries are waiting for the writer")
        future: asyncio.Future[Appended] = self._loop.create_future()
        self._pending += 1
        self._inbox.put(_Append(delivery, future))
        return future

    async def probe_write(self) -> None:
        """Append a row as the receiver would, then roll it back, in turn with the appends."""
        await self.run(_probe_write)

    def take_committed(self) -> dict[int, log.Committed]:
        """What was committed but not folded since the last call, by seq, for the projector."""
        committed, self._committed = self._committed, {}
        return committed

    @property
    def pending(self) -> int:
        """Deliveries waiting for a commit."""
        return self._pending

    async def close(self) -> None:
        """Commit what is queued, then close the connection and stop the thread."""
        self._closing = True  # appends from here on are refused, so the queue can drain
        if self._stopped is not None and not self._stopped.done():
            self._inbox.put(_STOP)  # after everything already queued
            await self._stopped

    # --- the writer thread ----------------------------------------------------------------

    def _serve(self, opened: asyncio.Future[sqlite3.Connection]) -> None:
        try:
            conn = log.connect(self._path)
        except BaseException as exc:
            self._to_loop(_settle_job, opened, None, exc)
            self._to_loop(_settle_job, self._stopped, None, None)
            return
        self._to_loop(_settle_job, opened, conn, None)
        try:
            self._take_items(conn)
        finally:
            conn.close()
            # Anything still queued (only if this thread failed) is refused, not left hanging.
            while True:
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Append):
                    self._to_loop(self._settle_failed, [item], StorageUnavailable("stopped"))
                elif isinstance(item, _Job):
                    self._to_loop(_settle_job, item.future, None, StorageUnavailable("stopped"))
            self._to_loop(_settle_job, self._stopped, None, None)

    def _take_items(self, conn: sqlite3.Connection) -> None:
        """Run jobs and commit batches of appends, in the order they came, until _STOP."""
        item = self._inbox.get()
        while item is not _STOP:
            if isinstance(item, _Job):
                try:
                    result = item.run(conn)
                except BaseException as exc:  # handed to the caller, who decides
                    self._to_loop(_settle_job, item.future, None, exc)
                else:
                    self._to_loop(_settle_job, item.future, result, None)
                item = self._inbox.get()
            elif isinstance(item, _Append):
                batch = [item]
                taken = self._gather(batch)
                self._commit(conn, batch)
                item = self._inbox.get() if taken is None else taken

    def _gather(self, batch: list[_Append]) -> object | None:
        """Add the appends queued right behind `batch[0]`; returns another item taken, if any."""
        while len(batch) < MAX_BATCH:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return None
            if not isinstance(item, _Append):
                return item
            batch.append(item)
        return None

    def _commit(self, conn: sqlite3.Connection, batch: list[_Append]) -> None:
        deliveries = [append.delivery for append in batch]
        try:
            results, projected = self._append(conn, deliveries)
        except Exception as exc:  # disk full, I/O error, lock timeout: all mean 503, retry later
            logger.error("append_failed", deliveries=len(batch), error=str(exc))
            self._to_loop(self._settle_failed, batch, StorageUnavailable(str(exc)))
            return
        self._to_loop(self._settle_committed, batch, results, projected)

    def _append(
        self, conn: sqlite3.Connection, deliveries: list[NewDelivery]
    ) -> tuple[list[Appended], bool]:
        """Append (and fold, if it can) in one transaction: one fsync covers both."""
        with log.transaction(conn):
            results = log.append_rows(conn, deliveries)
            projected = self._project_in(conn, deliveries, results)
        return results, projected

    def _project_in(
        self,
        conn: sqlite3.Connection,
        deliveries: list[NewDelivery],
        results: list[Appended],
    ) -> bool:
        if self._project is None:
            return False
        known = {
            result.seq: log.Committed(delivery.change)
            for delivery, result in zip(deliveries, results, strict=True)
        }
        # A savepoint: if folding fails, the deliveries still commit, unfolded, and the
        # projector folds them later from the log. Storing never waits on a read model.
        conn.execute("SAVEPOINT project_appended")
        try:
            projected = self._project(conn, known)
        except Exception as exc:
            conn.execute("ROLLBACK TO project_appended")
            logger.error("projection_in_commit_failed", error=str(exc))
            projected = False
        conn.execute("RELEASE project_appended")
        return projected

    def _to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        # RuntimeError: the loop has closed, so nobody is left waiting for the answer.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    # --- back on the event loop -----------------------------------------------------------

    def _settle_committed(
        self, batch: list[_Append], results: list[Appended], projected: bool
    ) -> None:
        self._pending -= len(batch)
        self.last_commit = CommitOutcome(time.monotonic(), succeeded=True)
        self._on_batch(len(batch))
        for append, result in zip(batch, results, strict=True):
            # A caller that went away still had its delivery stored; the sender will retry.
            if not append.future.done():
                append.future.set_result(result)
            # Bounded: if the projector falls far behind, it parses the rest from the log.
            if not projected and len(self._committed) < MAX_COMMITTED:
                change = append.delivery.change
                self._committed[result.seq] = log.Committed(change)
        self._on_commit(projected)

    def _settle_failed(self, batch: list[_Append], error: StorageUnavailable) -> None:
        self._pending -= len(batch)
        self.last_commit = CommitOutcome(time.monotonic(), succeeded=False)
        for append in batch:
            if not append.future.done():
                append.future.set_exception(error)


def _settle_job(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _probe_write(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        log.append_rows(conn, [probe_delivery()])
    finally:
        if conn.in_transaction:  # SQLite rolls some failures (a full disk) back by itself
            conn.execute("ROLLBACK")

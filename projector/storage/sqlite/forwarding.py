"""An HTTP worker's storage (`serve --workers N` on SQLite): appends go to the writer process.

The worker verifies and parses; the writer process owns the one write connection, commits
and folds. A 200 still means committed: `ForwardingLog.append` returns only once the writer
says the batch holding the delivery committed. Reads run on read-only connections to the
same file (WAL), as in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import structlog

from projector.storage.port import AlertOutbox, CommitOutcome, Overloaded, StorageUnavailable
from projector.storage.queries import SQLITE, SqlReads
from projector.storage.rows import Appended, NewDelivery
from projector.storage.sqlite import frames
from projector.storage.sqlite.change_count import SharedChangeCount, change_count_path
from projector.storage.sqlite.frames import FrameProtocol, Message
from projector.storage.sqlite.projection import PROJECTION_STATES_SQL
from projector.storage.sqlite.readers import ReaderPool

logger = structlog.get_logger("projector.worker")

# Reconnecting to a writer that is down: from this delay, doubling, to at most the next.
FIRST_RETRY_SECONDS = 0.05
LAST_RETRY_SECONDS = 1.0
# A fresh worker waits this long for its first connection before it starts answering.
FIRST_CONNECT_SECONDS = 5.0
NOT_CONNECTED = "the writer process is not reachable (it is starting or restarting)"
CONNECTION_LOST = (
    "the connection to the writer process was lost before it answered: the delivery may or "
    "may not be stored; a retry that was stored is recorded as a duplicate"
)


class ForwardingLog:
    """The port's EventLog in an HTTP worker: each append goes to the writer process."""

    def __init__(self, socket: Path, max_pending: int, on_changed: Callable[[], None]) -> None:
        self._socket = socket
        self._max_pending = max_pending
        self._on_changed = on_changed  # the writer said the read models changed
        self._peer: FrameProtocol | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_commit: CommitOutcome | None = None

    @property
    def pending(self) -> int:
        """Deliveries sent to the writer and not yet answered."""
        return len(self._waiting)

    @property
    def connected(self) -> bool:
        return self._peer is not None and self._peer.open

    async def open(self) -> None:
        """Connect, and keep reconnecting in the background whenever the writer goes away."""
        self._task = asyncio.create_task(self._keep_connected(), name="writer-connection")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FIRST_CONNECT_SECONDS):
                await self._connected.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def append(self, delivery: NewDelivery) -> Appended:
        """Append one delivery; returns once the writer has committed it."""
        seq, duplicate_of = await self._request(frames.APPEND, delivery)
        return Appended(seq, duplicate_of)

    async def probe_write(self) -> None:
        """The writer's own probe: append a row, roll it back."""
        await self._request(frames.PROBE, None)

    async def _request(self, kind: str, payload: object) -> Any:
        peer = self._peer
        if peer is None or not peer.open:
            raise StorageUnavailable(NOT_CONNECTED)
        if len(self._waiting) >= self._max_pending:
            raise Overloaded(f"{len(self._waiting)} deliveries are waiting for the writer process")
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            peer.send((kind, ident, payload))
            return await future
        finally:
            self._waiting.pop(ident, None)

    def _received(self, message: Message) -> None:
        kind, ident, payload = message
        if kind == frames.CHANGED:
            self._on_changed()
            return
        future = self._waiting.pop(ident, None)
        if kind == frames.DONE:
            self.last_commit = CommitOutcome(time.monotonic(), succeeded=True)
            if future is not None and not future.done():
                future.set_result(payload)
            return
        reason, detail = payload
        error: Exception
        if reason == frames.OVERLOADED:
            error = Overloaded(detail)
        else:
            self.last_commit = CommitOutcome(time.monotonic(), succeeded=False)
            error = StorageUnavailable(detail)
        if future is not None and not future.done():
            future.set_exception(error)

    async def _keep_connected(self) -> None:
        loop = asyncio.get_running_loop()
        delay = FIRST_RETRY_SECONDS
        was_down = False
        while True:
            lost: asyncio.Future[None] = loop.create_future()

            def hung_up(peer: FrameProtocol, lost: asyncio.Future[None] = lost) -> None:
                if not lost.done():
                    lost.set_result(None)

            try:
                _, peer = await loop.create_unix_connection(
                    lambda: FrameProtocol(self._received, hung_up), str(self._socket)
                )
            except OSError as exc:
                if not was_down:
                    logger.warning("writer_unreachable", error=exc.strerror or str(exc))
                    was_down = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, LAST_RETRY_SECONDS)
                continue
            self._peer, delay, was_down = peer, FIRST_RETRY_SECONDS, False
            self._connected.set()
            logger.info("writer_connected")
            self._on_changed()  # whatever changed while this worker was not listening
            try:
                await lost
            finally:
                peer.close()
                self._peer = None
                self._connected.clear()
                # Readiness probes again (and fails) rather than trust an earlier commit.
                self.last_commit = CommitOutcome(time.monotonic(), succeeded=False)
                self._fail_waiting()
            logger.warning("writer_connection_lost")

    def _fail_waiting(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(StorageUnavailable(CONNECTION_LOST))


class FollowingProjector:
    """A worker does not fold (the writer process does); it follows the read models' state."""

    active = False

    def __init__(self, readers: ReaderPool) -> None:
        self._readers = readers

    async def fold_new(self, limit: int) -> int:
        return 0

    async def state_token(self) -> Hashable:
        # The fallback for a lost socket: polled, it still sees every fold and rebuild swap.
        return tuple(await self._readers.fetch(PROJECTION_STATES_SQL, ()))

    async def wait_for_appends(self, seconds: float) -> None:
        # The writer's CHANGED frames drop cached answers at once; this only paces the poll.
        await asyncio.sleep(seconds)


class WorkerStorage:
    """port.Storage of an HTTP worker: ForwardingLog, read-only readers, no alerts of its own."""

    def __init__(
        self,
        path: Path,
        socket: Path,
        *,
        max_pending: int,
        on_read_models_changed: Callable[[], None],
    ) -> None:
        self.description = f"{path} (appends through the writer process)"
        self._readers = ReaderPool(path)
        self.log = ForwardingLog(socket, max_pending, on_read_models_changed)
        self.projector = FollowingProjector(self._readers)
        self.reads = SqlReads(self._readers.fetch, SQLITE)
        self._changes = SharedChangeCount(change_count_path(socket))
        self.shared_changes = self._changes.read

    @property
    def alerts(self) -> AlertOutbox:
        raise RuntimeError("alerts are derived and sent by the writer process, not a worker")

    async def open(self) -> None:
        await self._readers.open()  # the writer process created and migrated the file
        await self.log.open()

    async def close(self) -> None:
        # The readers' threads are not daemons: left open, they would keep the process from
        # exiting, whatever the connection to the writer did.
        try:
            await self.log.close()
        finally:
            await self._readers.close()
            self._changes.close()

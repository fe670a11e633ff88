"""The SQLite adapter: one file; a write lane that appends and folds; read-only readers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from pathlib import Path

import structlog

from projector.storage.port import ProjectionStatus, Verification
from projector.storage.queries import SQLITE, SqlReads
from projector.storage.rows import StoredRow
from projector.storage.sqlite import chain, database, log, outbox, projection, replay
from projector.storage.sqlite.readers import ReaderPool
from projector.storage.sqlite.writer import WriteLane

logger = structlog.get_logger("projector.storage.sqlite")

# After a commit wakes it, the projector lets more commits gather for this long: one batch
# then folds many of them, and its fixed cost (a transaction, the state reads) is paid once
# per batch rather than once per commit. It adds at most this much to projection lag.
GATHER_SECONDS = 0.02


class SqliteProjector:
    """Folds on the write lane: in the commit that appends, else by catching up from the log."""

    active = True  # one file, one writer at a time: whoever holds the write lock folds

    def __init__(self, lane: WriteLane, wake: asyncio.Event) -> None:
        self._lane = lane
        self._wake = wake

    async def fold_new(self, limit: int) -> int:
        # What the lane just committed, changes parsed by the receiver: folded without
        # reading the log again.
        known = self._lane.take_committed()
        return await self._lane.run(partial(projection.catch_up_batch, limit=limit, known=known))

    async def state_token(self) -> Hashable:
        return await self._lane.run(projection.state_token)

    async def wait_for_appends(self, seconds: float) -> None:
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that lands as the
        # wait completes (a commit just set `wake`), and shutdown then waits forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
            await asyncio.sleep(GATHER_SECONDS)
        self._wake.clear()


class SqliteStorage:
    """The log, projector, reads and alert outbox of one SQLite file (port.Storage)."""

    shared_changes = None  # this process folds: it knows when the read models change

    def __init__(
        self,
        path: Path,
        *,
        max_pending: int,
        on_read_models_changed: Callable[[], None],
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.description = str(path)
        wake = asyncio.Event()

        def committed(projected: bool) -> None:
            if projected:  # folded in the commit: the answers change now, nothing is left
                on_read_models_changed()
            else:
                wake.set()

        self._lane = WriteLane(
            path, max_pending, committed, project=projection.project_appended, on_batch=on_batch
        )
        self._readers = ReaderPool(path)
        self.log = self._lane
        self.projector = SqliteProjector(self._lane, wake)
        self.reads = SqlReads(self._readers.fetch, SQLITE)
        self.alerts = outbox.SqliteOutbox(self._lane)

    async def open(self) -> None:
        await self._lane.open()
        await self._lane.run(log.migrate)
        stale = await self._lane.run(projection.prepare)
        if stale:
            # New database, or a release changed a fold: the read models are rebuilt.
            logger.info("projections_rebuilding", projections=stale, reason="new or changed")
            await self._lane.run(replay.rebuild)
        await self._readers.open()

    async def close(self) -> None:
        # Readers first: a reader that has read keeps a lock that stops the writer's close
        # from checkpointing, and a read-only connection cannot checkpoint. Closed last, the
        # writer copies the WAL into the database file and removes it.
        await self._readers.close()
        await self._lane.close()


class SqliteMaintenance:
    """`projector verify`, `rebuild` and `copy` on a SQLite file (port.Maintenance)."""

    def __init__(
        self, path: Path, *, readonly: bool, create: bool = False, label: str = "PROJECTOR_DB"
    ) -> None:
        self.description = str(database.shown(path))
        self._conn = database.open_database(path, readonly=readonly, create=create, label=label)
        if not readonly:
            log.migrate(self._conn)

    async def head(self) -> tuple[int, str]:
        return chain.head_hash(self._conn)

    async def verify(self) -> Verification:
        return await asyncio.to_thread(self._verify)

    def _verify(self) -> Verification:
        log.check_version(self._conn)
        quick_check = [row[0] for row in self._conn.execute("PRAGMA quick_check")]
        report = chain.verify_chain(self._conn)
        guards = log.missing_guards(self._conn)
        checks = (
            f"sqlite quick_check: {'; '.join(quick_check)}",
            "sqlite append-only triggers: "
            + (
                "in place"
                if not guards
                else f"MISSING {', '.join(guards)} (the log can be altered)"
            ),
        )
        return Verification(report, checks, quick_check == ["ok"] and not guards)

    async def rebuild(self) -> int:
        return await asyncio.to_thread(replay.rebuild, self._conn)

    async def statuses(self) -> list[ProjectionStatus]:
        return projection.statuses(self._conn)

    async def stored_rows(self, after: int, limit: int) -> list[StoredRow]:
        return chain.rows_after(self._conn, after, limit)

    async def append_stored(self, rows: Sequence[StoredRow]) -> None:
        await asyncio.to_thread(self._append_stored, rows)

    def _append_stored(self, rows: Sequence[StoredRow]) -> None:
        with log.transaction(self._conn):
            log.append_stored(self._conn, rows)

    async def close(self) -> None:
        self._conn.close()

"""The projector on PostgreSQL: folds the log under a lease, so one process folds at a time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable, Hashable

import structlog
from psycopg_pool import AsyncConnectionPool

from projector.readmodels import READ_MODELS
from projector.storage.location import PostgresUrl
from projector.storage.port import StorageUnavailable
from projector.storage.postgres import folding, lease
from projector.storage.postgres.connect import (
    CONNECT_TIMEOUT_SECONDS,
    CONNECTION_ERRORS,
    Connection,
    close_quietly,
    connect,
    describe_error,
    unavailable,
)

logger = structlog.get_logger("projector.storage.postgres.projector")

LEASE_SECONDS = 6.0
# An idle holder renews this often, well within the lease, so a slow renewal never loses it.
RENEW_SECONDS = 2.0
# A standby tries to take the lease at most this often.
CLAIM_SECONDS = 1.0
# After a wake-up, more commits gather this long, so one batch folds many of them.
GATHER_SECONDS = 0.02
LISTEN_RETRY_SECONDS = 1.0
FOLDED_CHANNEL = "projector_folded"
CHANNELS = ("projector_log", FOLDED_CHANNEL)


def owner_name() -> str:
    """Who holds the lease, for operators: host, process, and a nonce for reused pids."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class PostgresProjector:
    """Folds new deliveries into the read models while this process holds the lease.

    Every batch runs in one transaction that first locks the lease row and checks owner,
    epoch and expiry: a process paused past its lease (and replaced) folds nothing after.
    """

    def __init__(
        self,
        url: PostgresUrl,
        reads: AsyncConnectionPool[Connection],
        *,
        lease_seconds: float = LEASE_SECONDS,
        on_folded_elsewhere: Callable[[], None] = lambda: None,
    ) -> None:
        self._url = url
        self._reads = reads
        self._lease_seconds = lease_seconds
        self._renew_seconds = min(RENEW_SECONDS, lease_seconds / 3)
        self._on_folded = on_folded_elsewhere
        self.owner = owner_name()
        self._conn: Connection | None = None
        self._epoch: int | None = None
        self._renewed_at = 0.0  # time.monotonic() when the lease's last extension began
        self._claim_tried_at = -CLAIM_SECONDS
        self._woken = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._log = logger.bind(database=str(url), owner=self.owner)

    @property
    def active(self) -> bool:
        """Whether this process holds a live lease (by its own clock, conservatively)."""
        return self._epoch is not None and time.monotonic() - self._renewed_at < self._lease_seconds

    @property
    def lease(self) -> tuple[str, int, float] | None:
        """Owner, epoch and length of the lease this process holds, for fenced writes; or None."""
        return None if self._epoch is None else (self.owner, self._epoch, self._lease_seconds)

    def wake(self) -> None:
        """Called after a commit of this process's log: new deliveries are there."""
        self._woken.set()

    async def fold_new(self, limit: int) -> int:
        """Fold up to `limit` new deliveries; 0 when none are new or another process folds."""
        try:
            conn = await self._connection()
            if self._epoch is None and not await self._claim(conn):
                return 0
            if not await self._has_new(conn):
                await self._renew_if_due(conn)
                return 0
            return await self._fold(conn, limit)
        except CONNECTION_ERRORS as exc:
            await self._drop_if_broken()
            raise unavailable(self._url, exc, "folding the log into the read models") from None

    async def state_token(self) -> Hashable:
        """Every projection's position and generation: moves with any process's fold or swap."""
        try:
            async with self._reads.connection() as conn:
                cur = await conn.execute(
                    "SELECT name, position, generation FROM projections ORDER BY name"
                )
                return tuple(tuple(row) for row in await cur.fetchall())
        except CONNECTION_ERRORS as exc:
            raise unavailable(self._url, exc, "reading the projections' positions") from None

    async def wait_for_appends(self, seconds: float) -> None:
        """Return after a commit here, a notification from any process, or `seconds`."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="projector-listen")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._woken.wait()
            await asyncio.sleep(GATHER_SECONDS)
        self._woken.clear()

    async def close(self) -> None:
        """Stop listening, hand the lease back, and close the connection."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._conn is not None and self._epoch is not None:
            # Best effort: if the database is gone, the lease simply runs out.
            with contextlib.suppress(*CONNECTION_ERRORS):
                async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                    await lease.release(self._conn, self.owner, self._epoch)
            self._epoch = None
        await close_quietly(self._conn)
        self._conn = None

    # --- the lease ----------------------------------------------------------------------------

    async def _claim(self, conn: Connection) -> bool:
        now = time.monotonic()
        if now - self._claim_tried_at < CLAIM_SECONDS:
            return False
        self._claim_tried_at = now
        epoch = await lease.claim(conn, self.owner, self._lease_seconds)
        if epoch is None:
            return False
        self._epoch, self._renewed_at = epoch, now
        self._log.info("projector_lease_taken", epoch=epoch)
        return True

    async def _renew_if_due(self, conn: Connection) -> None:
        started = time.monotonic()
        if self._epoch is None or started - self._renewed_at < self._renew_seconds:
            return
        if await lease.renew(conn, self.owner, self._epoch, self._lease_seconds):
            self._renewed_at = started
        else:
            self._lost()

    def _lost(self) -> None:
        self._log.warning("projector_lease_lost", epoch=self._epoch)
        self._epoch = None

    # --- folding --------------------------------------------------------------------------------

    async def _has_new(self, conn: Connection) -> bool:
        cur = await conn.execute(
            "SELECT (SELECT seq FROM log_head) > (SELECT coalesce(min(position), 0)"
            " FROM projections)"
        )
        row = await cur.fetchone()
        return row is not None and bool(row[0])

    async def _fold(self, conn: Connection, limit: int) -> int:
        assert self._epoch is not None
        started = time.monotonic()
        async with conn.transaction():
            if not await lease.hold(conn, self.owner, self._epoch, self._lease_seconds):
                self._lost()  # fenced out: another process took over; fold nothing
                return 0
            # Locked: a rebuild's swap (which moves positions and tables) waits for this
            # batch, or this batch waits for the swap and then folds into the new tables.
            cur = await conn.execute(
                "SELECT name, position, generation FROM projections ORDER BY name FOR UPDATE"
            )
            positions = {name: (int(p), int(g)) for name, p, g in await cur.fetchall()}
            if any(model.name not in positions for model in READ_MODELS):
                return 0  # not built yet: start-up's rebuild creates them
            start = max(0, min(position for position, _ in positions.values()))
            deliveries = await folding.read_after(conn, start, limit)
            moved = await folding.fold_range(conn, positions, deliveries)
            if moved:
                end = deliveries[-1].seq
                await conn.execute(
                    "UPDATE projections SET position = %s WHERE name = ANY(%s)", (end, moved)
                )
                # Delivered at commit: other processes drop their cached answers.
                await conn.execute("SELECT pg_notify(%s, %s)", (FOLDED_CHANNEL, str(end)))
        self._renewed_at = started
        return len(deliveries)

    async def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = await connect(self._url)
        return self._conn

    async def _drop_if_broken(self) -> None:
        if self._conn is not None and (self._conn.broken or self._conn.closed):
            await close_quietly(self._conn)
            self._conn = None

    # --- notifications ----------------------------------------------------------------------

    async def _listen(self) -> None:
        """Wake the projector on any process's appends or folds; reconnect quietly when cut."""
        while True:
            conn: Connection | None = None
            try:
                conn = await connect(self._url)
                for channel in CHANNELS:
                    await conn.execute(f"LISTEN {channel}")
                # Notifications sent while no connection listened are lost: look once anyway.
                self._woken.set()
                async for notify in conn.notifies():
                    self._woken.set()
                    if notify.channel == FOLDED_CHANNEL:
                        self._on_folded()
            except (StorageUnavailable, *CONNECTION_ERRORS) as exc:
                self._log.info("listen_reconnecting", error=describe_error(self._url, exc))
            finally:
                await close_quietly(conn)
            await asyncio.sleep(LISTEN_RETRY_SECONDS)

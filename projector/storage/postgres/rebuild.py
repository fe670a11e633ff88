"""Rebuild on PostgreSQL: replay the log into fresh tables while service goes on, then swap."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import psycopg
import structlog

from projector import integrity
from projector.events import format_instant
from projector.readmodels import READ_MODELS
from projector.storage.port import RebuildSuperseded
from projector.storage.postgres import folding, schema
from projector.storage.postgres.connect import CONNECTION_ERRORS, Connection
from projector.storage.postgres.projector import FOLDED_CHANNEL
from projector.storage.rows import LoggedDelivery

logger = structlog.get_logger("projector.storage.postgres.rebuild")

REBUILD_SUFFIX = "__rebuild"
# Deliveries per fill transaction: each is short, and appends never wait on it anyway.
REBUILD_CHUNK = 2000
# The swap gives up a lock it cannot get this quickly, and tries again, rather than make
# every query queue behind it.
SWAP_LOCK_TIMEOUT = "2s"
SWAP_ATTEMPTS = 5
# Held (per session) by the process rebuilding stale projections at start-up.
STARTUP_REBUILD_LOCK = 0x726566_6F6C6402  # "refold" 2
STARTUP_WAIT_SECONDS = 3600.0
_ALL = {model.name for model in READ_MODELS}


class SwapBlocked(Exception):
    """The swap could not get its locks, attempt after attempt."""


def _clock() -> datetime:
    return datetime.now(UTC)


async def rebuild(
    conn: Connection, chunk: int = REBUILD_CHUNK, clock: Callable[[], datetime] = _clock
) -> int:
    """Replay the whole log into fresh tables and swap them in at once; returns the head."""
    generation, head = await _claim(conn)
    log = logger.bind(generation=generation)
    position = 0
    while position < head:
        async with conn.transaction():
            await _check_claim(conn, generation)
            deliveries = await folding.read_after(conn, position, min(chunk, head - position))
            if not deliveries:  # the rows up to the head end early: nothing past it is folded
                raise integrity.missing_row(position + 1, None)
            await _fold(conn, deliveries, position, generation)
            position = deliveries[-1].seq
        log.info("rebuild_progress", position=position, head=head)
    # Indexes built once over the filled tables: a sort, cheaper than keeping them up to date.
    async with conn.transaction():
        await _check_claim(conn, generation)
        for model in READ_MODELS:
            for statement in schema.create_indexes_sql(
                model, model.table + REBUILD_SUFFIX, generation
            ):
                await conn.execute(statement)
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            position = await _swap(conn, generation, position, chunk, clock)
        except psycopg.errors.LockNotAvailable:
            log.warning("rebuild_swap_waiting", attempt=attempt, lock_timeout=SWAP_LOCK_TIMEOUT)
            await asyncio.sleep(0.1 * attempt)
            continue
        log.info("rebuild_done", position=position)
        return position
    raise SwapBlocked(
        f"rebuild {generation}: the swap could not lock the read models within "
        f"{SWAP_LOCK_TIMEOUT} in {SWAP_ATTEMPTS} attempts; long queries or transactions hold "
        "them (see pg_stat_activity): end them, or run `projector rebuild` again later"
    )


async def _claim(conn: Connection) -> tuple[int, int]:
    """Claim the next generation and create its empty tables; returns it and the log head."""
    async with conn.transaction():
        # Self-conflicting: two rebuilds never claim (or swap) at once, nor share a generation.
        await conn.execute("LOCK TABLE rebuild_claims IN SHARE ROW EXCLUSIVE MODE")
        cur = await conn.execute(
            "SELECT greatest((SELECT coalesce(max(generation), 0) FROM projections),"
            " (SELECT coalesce(max(generation), 0) FROM rebuild_claims)) + 1,"
            " (SELECT seq FROM log_head)"
        )
        row = await cur.fetchone()
        assert row is not None
        generation, head = int(row[0]), int(row[1])
        await conn.execute("INSERT INTO rebuild_claims (generation) VALUES (%s)", (generation,))
        # Leftovers of a rebuild that died or was superseded go first.
        await conn.execute("DELETE FROM projection_errors WHERE generation >= %s", (generation,))
        for model in READ_MODELS:
            table = model.table + REBUILD_SUFFIX
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
            await conn.execute(schema.create_table_sql(model, table, generation))
    return generation, head


async def _check_claim(conn: Connection, generation: int) -> None:
    cur = await conn.execute("SELECT max(generation) FROM rebuild_claims")
    row = await cur.fetchone()
    newest = None if row is None else row[0]
    if newest != generation:
        newer = (
            "a newer rebuild was swapped in since it began"
            if newest is None
            else f"rebuild {newest} started after it and carries on"
        )
        raise RebuildSuperseded(f"rebuild {generation} stops: {newer}")


async def _fold(
    conn: Connection, deliveries: Sequence[LoggedDelivery], after: int, generation: int
) -> None:
    """Fold `deliveries` (all past `after`) into every rebuild table."""
    positions = {name: (after, generation) for name in _ALL}
    await folding.fold_range(conn, positions, deliveries, REBUILD_SUFFIX)


async def _swap(
    conn: Connection, generation: int, position: int, chunk: int, clock: Callable[[], datetime]
) -> int:
    """One short transaction: fold what came since, swap the tables, move every position."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'")
        await conn.execute("LOCK TABLE rebuild_claims IN SHARE ROW EXCLUSIVE MODE")
        await _check_claim(conn, generation)
        # The live projector's batch holds these rows while it folds: the swap waits for it,
        # and its next batch waits for the swap, then folds into the new tables.
        await conn.execute("SELECT name FROM projections FOR UPDATE")
        while deliveries := await folding.read_after(conn, position, chunk):
            await _fold(conn, deliveries, position, generation)
            position = deliveries[-1].seq
        for model in READ_MODELS:
            await conn.execute(f"DROP TABLE IF EXISTS {model.table}")
            await conn.execute(f"ALTER TABLE {model.table}{REBUILD_SUFFIX} RENAME TO {model.table}")
            await conn.execute(
                "INSERT INTO projections (name, version, position, generation)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET"
                " version = EXCLUDED.version, position = EXCLUDED.position,"
                " generation = EXCLUDED.generation",
                (model.name, model.version, position, generation),
            )
        await conn.execute("DELETE FROM projection_errors WHERE generation < %s", (generation,))
        await conn.execute("DELETE FROM rebuild_claims")
        # When each generation was swapped in: operators ask when the last rebuild ran.
        await conn.execute(
            "INSERT INTO rebuilds (generation, finished_at) VALUES (%s, %s)"
            " ON CONFLICT (generation) DO UPDATE SET finished_at = EXCLUDED.finished_at",
            (generation, format_instant(clock())),
        )
        await conn.execute("SELECT pg_notify(%s, %s)", (FOLDED_CHANNEL, str(position)))
    return position


async def rebuild_stale(conn: Connection, wait_seconds: float = STARTUP_WAIT_SECONDS) -> None:
    """Rebuild the projections whose version changed (or new); one process of many does it.

    The others wait for it and go on; if it dies, the next to get the lock rebuilds.
    """
    if not await schema.stale_projections(conn):
        return
    deadline = time.monotonic() + wait_seconds
    waiting_logged = False
    while True:
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (STARTUP_REBUILD_LOCK,))
        row = await cur.fetchone()
        if row is not None and row[0]:
            break
        if not waiting_logged:
            logger.info("projections_rebuild_waiting", reason="another process is rebuilding")
            waiting_logged = True
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"another process has been rebuilding the projections for over {wait_seconds:g}"
                " s; wait for it to finish (its log shows rebuild_progress), then start again"
            )
        await asyncio.sleep(0.5)
    try:
        stale = await schema.stale_projections(conn)  # re-read: the other process may be done
        if stale:
            logger.info("projections_rebuilding", projections=stale, reason="new or changed")
            await rebuild(conn)
    finally:
        # A broken connection has lost the lock with its session: nothing to give back.
        with contextlib.suppress(*CONNECTION_ERRORS):
            await conn.execute("SELECT pg_advisory_unlock(%s)", (STARTUP_REBUILD_LOCK,))

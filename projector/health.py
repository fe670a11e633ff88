"""Readiness (`GET /readyz`) and the storage status it shares with `/metrics`."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from aiohttp import web

from projector import log
from projector.answers import NotReady, Ready
from projector.events import parse_delivery
from projector.http import Handler, json_answer
from projector.readers import ReaderPool, fetch_rows
from projector.writer import WriteLane

logger = structlog.get_logger("projector.health")


class ProjectorWatch:
    """The projector task, once storage is open: readiness asks whether it still runs."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    def running(self) -> bool:
        return self.task is not None and not self.task.done()


PROJECTOR = web.AppKey("projector", ProjectorWatch)

# A commit that succeeded this recently proves the log writable; otherwise readiness probes.
RECENT_COMMIT_SECONDS = 10.0
# A probe waits for the write lane behind queued appends; past this, the lane is stuck.
PROBE_TIMEOUT_SECONDS = 5.0

# Fixed phrases only: /readyz takes no token, so it names what is wrong, never a count.
LOG_NOT_WRITABLE = "the log does not accept writes"
PROJECTOR_NOT_RUNNING = "the projector is not running"
LOG_NOT_READABLE = "the log cannot be read"
PROJECTIONS_LAGGING = "a projection lags behind the log beyond PROJECTOR_READY_MAX_LAG_SECONDS"

_PROBE = log.NewDelivery.verified(
    b"{}",
    parse_delivery(b"{}", "test"),
    environment="test",
    received_at="1970-01-01T00:00:00Z",
    key_id="readiness-probe",
    signed_as="raw",
    headers={},
)


@dataclass(frozen=True)
class ProjectionLag:
    """Where one projection stands against the log, and how old its backlog is."""

    name: str
    position: int
    errors: int
    lag_seconds: float
    rebuilt_at: str | None  # when its current generation was swapped in (ISO 8601, UTC)


@dataclass(frozen=True)
class StorageStatus:
    """The log head and every projection's position, errors and lag."""

    log_head: int
    projections: tuple[ProjectionLag, ...]

    @property
    def max_lag_seconds(self) -> float:
        return max((p.lag_seconds for p in self.projections), default=0.0)


# One statement, so one snapshot: head and positions agree (the reader connections are
# shared, so no read transaction may span two statements). Every part is an index lookup: the
# head and the oldest unfolded delivery by primary key, the errors by their own key.
_STATUS_QUERY = """
WITH head AS (SELECT coalesce(max(seq), 0) AS seq FROM deliveries)
SELECT head.seq, p.name, p.position,
    (SELECT count(*) FROM projection_errors e
     WHERE e.name = p.name AND e.generation = p.generation),
    CASE WHEN p.position < head.seq THEN
        (SELECT received_at FROM deliveries d WHERE d.seq > p.position ORDER BY d.seq LIMIT 1)
    END,
    (SELECT finished_at FROM rebuilds r WHERE r.generation = p.generation)
FROM head LEFT JOIN projections p ORDER BY p.name
"""


async def storage_status(readers: ReaderPool, now: datetime) -> StorageStatus:
    """The log head and each projection's position, errors and lag, read in one statement."""
    async with readers.connection() as conn:
        rows = await fetch_rows(conn, _STATUS_QUERY)
    projections = []
    for _head, name, position, errors, oldest, rebuilt_at in rows:
        if name is None:  # no projection yet
            continue
        lag = 0.0
        if oldest is not None:
            lag = max(0.0, (now - datetime.fromisoformat(oldest)).total_seconds())
        projections.append(ProjectionLag(name, position, errors, lag, rebuilt_at))
    return StorageStatus(int(rows[0][0]), tuple(projections))


def probe_write(conn: sqlite3.Connection) -> None:
    """Append a row as the receiver would, then roll it back: the log's write path works."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        log.append_rows(conn, [_PROBE])
    finally:
        if conn.in_transaction:  # SQLite rolls some failures (a full disk) back by itself
            conn.execute("ROLLBACK")


async def log_writable(lane: WriteLane) -> bool:
    """A recent commit succeeded, or a probe through the write lane does."""
    last = lane.last_commit
    if last is not None and last.succeeded and time.monotonic() - last.at < RECENT_COMMIT_SECONDS:
        return True
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            await lane.run(probe_write)
    except Exception as exc:  # locked, read-only, disk gone, lane closed: all "not writable"
        # /readyz names no detail to its unauthenticated callers; the operator's log does.
        logger.warning("readiness_write_probe_failed", error=str(exc) or type(exc).__name__)
        return False
    return True


def make_readyz(
    lane: WriteLane, readers: ReaderPool, projector: ProjectorWatch, max_lag_seconds: float
) -> Handler:
    """`GET /readyz`: 200 only when the log takes writes and the projector keeps up."""

    async def readyz(request: web.Request) -> web.Response:
        reasons = []
        if not await log_writable(lane):
            reasons.append(LOG_NOT_WRITABLE)
        if not projector.running():
            reasons.append(PROJECTOR_NOT_RUNNING)
        try:
            status = await storage_status(readers, datetime.now(UTC))
        except Exception as exc:
            logger.warning("readiness_status_unreadable", error=str(exc))
            reasons.append(LOG_NOT_READABLE)
        else:
            if status.max_lag_seconds > max_lag_seconds:
                reasons.append(PROJECTIONS_LAGGING)
        if reasons:
            return json_answer(NotReady(status="not_ready", reasons=reasons), 503)
        return json_answer(Ready(status="ready"))

    return readyz

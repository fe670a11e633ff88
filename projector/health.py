"""Readiness (`GET /readyz`) and the storage status it shares with `/metrics`."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import structlog
from aiohttp import web

from projector.answers import NotReady, Ready
from projector.http import Handler, json_answer
from projector.storage.port import EventLog, Storage

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


async def log_writable(log: EventLog) -> bool:
    """A recent commit succeeded, or a probe append (rolled back) does."""
    last = log.last_commit
    if last is not None and last.succeeded and time.monotonic() - last.at < RECENT_COMMIT_SECONDS:
        return True
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            await log.probe_write()
    except Exception as exc:  # locked, read-only, disk gone, lane closed: all "not writable"
        # /readyz names no detail to its unauthenticated callers; the operator's log does.
        logger.warning("readiness_write_probe_failed", error=str(exc) or type(exc).__name__)
        return False
    return True


def make_readyz(storage: Storage, projector: ProjectorWatch, max_lag_seconds: float) -> Handler:
    """`GET /readyz`: 200 only when the log takes writes and the projector keeps up."""

    async def readyz(request: web.Request) -> web.Response:
        reasons = []
        if not await log_writable(storage.log):
            reasons.append(LOG_NOT_WRITABLE)
        if not projector.running():
            reasons.append(PROJECTOR_NOT_RUNNING)
        try:
            status = await storage.reads.storage_status(datetime.now(UTC))
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

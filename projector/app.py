"""The composition root: wires settings, the write lane, readers, projector and routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from functools import partial

import structlog
from aiohttp import web

from projector import api, apidocs, changes, health, log, metrics, projection, replay, ui
from projector.answercache import AnswerCache
from projector.config import Settings
from projector.readers import AccountReads, ReaderPool
from projector.receiver import make_receiver
from projector.writer import WriteLane

logger = structlog.get_logger("projector.app")

PROJECTION_BATCH = 500
# The projector also polls, so deliveries appended by another process are folded too.
IDLE_POLL_SECONDS = 1.0
# After a commit wakes it, the projector lets more commits gather for this long: one batch
# then folds many of them, and its fixed cost (a transaction, the state reads) is paid once
# per batch rather than once per commit. It adds at most this much to projection lag.
GATHER_SECONDS = 0.02


def utc_now() -> datetime:
    """The wall clock, in UTC: the only clock the service reads (received_at)."""
    return datetime.now(UTC)


async def project_continuously(
    lane: WriteLane, wake: asyncio.Event, read_models_changed: Callable[[], None] = lambda: None
) -> None:
    """Fold new deliveries as they are committed, off the request path, forever.

    `read_models_changed` is called after each batch that folded anything, and when the
    projections' positions or generations moved otherwise (a `projector rebuild` swap).
    """
    seen: object = None
    while True:
        # What the lane just committed, changes parsed by the receiver: folded without
        # reading the log again.
        batch = partial(
            projection.catch_up_batch, limit=PROJECTION_BATCH, known=lane.take_committed()
        )
        try:
            folded = await lane.run(batch)
            state: object = None if folded else await lane.run(projection.state_token)
        except Exception as exc:  # e.g. the database is locked by a long rebuild: try again
            logger.error("projection_batch_failed", error=str(exc))
            folded, state = 0, seen
        if folded or state != seen:
            read_models_changed()
            seen = state
        if folded < PROJECTION_BATCH:
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that lands as
            # the wait completes (a commit just set `wake`), and shutdown then waits forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL_SECONDS):
                    await wake.wait()
                await asyncio.sleep(GATHER_SECONDS)
            wake.clear()


async def open_storage(lane: WriteLane) -> None:
    """Migrate the log, and rebuild any projection whose version changed."""
    await lane.run(log.migrate)
    stale = await lane.run(projection.prepare)
    if stale:
        # New database, or a release changed a fold: the read models are rebuilt from the log.
        logger.info("projections_rebuilding", projections=stale, reason="new or version changed")
        await lane.run(replay.rebuild)


def build_app(settings: Settings, clock: Callable[[], datetime] = utc_now) -> web.Application:
    """The whole service as an aiohttp application; storage opens on start-up."""
    answers = AnswerCache()
    observed = metrics.Metrics()
    watch = health.ProjectorWatch()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # Bodies stay as sent: aiohttp would otherwise inflate a gzip bomb (or refuse br with
        # a text 400) before the receiver could answer 415.
        handler_args={"auto_decompress": False},
        middlewares=[api.json_errors, api.bearer_auth(settings.read_tokens), api.etag(answers)],
    )
    wake = asyncio.Event()
    readers = ReaderPool(settings.db)
    change_hub = changes.add_change_stream(app, settings, readers)

    def read_models_changed() -> None:
        answers.read_models_changed()
        change_hub.read_models_changed()

    def committed(projected: bool) -> None:
        if projected:  # folded in the commit: the answers change now, nothing is left to do
            read_models_changed()
        else:
            wake.set()

    lane = WriteLane(
        settings.db,
        settings.max_pending,
        committed,
        project=projection.project_appended,
        on_batch=observed.commit_batch_size.observe,
    )
    app[api.READERS] = readers
    app[api.ACCOUNT_READS] = AccountReads(readers)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await lane.open()
        await open_storage(lane)
        await readers.open()
        projector = asyncio.create_task(
            project_continuously(lane, wake, read_models_changed), name="projector"
        )
        watch.task = projector
        logger.info("storage_ready", db=str(settings.db))
        yield
        # Shutdown: requests have finished; stop folding, commit what is queued, close.
        projector.cancel()
        await asyncio.gather(projector, return_exceptions=True)
        # Readers first: a reader that has read keeps a lock that stops the writer's close
        # from checkpointing, and a read-only connection cannot checkpoint. Closed last, the
        # writer copies the WAL into the database file and removes it.
        await readers.close()
        await lane.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post(
        "/webhooks/refold",
        make_receiver(
            lane,
            settings.signing_keys,
            settings.max_body_bytes,
            settings.max_pending,
            clock,
            observed,
        ),
    )
    api.add_query_routes(app)
    apidocs.add_document_routes(app)
    ui.add_ui_routes(app)
    metrics.install(app, settings, observed, lane, readers, watch)
    return app

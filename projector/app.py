"""The composition root: wires settings, storage, the projector loop and the routes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog
from aiohttp import web

from projector import api, apidocs, changes, health, metrics, ui
from projector.alerting import AlertLoop, alert_loop_for
from projector.answercache import AnswerCache
from projector.config import Settings
from projector.receiver import make_receiver
from projector.storage.engine import storage_for
from projector.storage.port import Projector, Storage

logger = structlog.get_logger("projector.app")

PROJECTION_BATCH = 500
# The projector also polls, so deliveries appended by another process are folded too, and
# a process that does not fold sees the read models move.
IDLE_POLL_SECONDS = 1.0
STORAGE = web.AppKey("storage", Storage)


def utc_now() -> datetime:
    """The wall clock, in UTC: the only clock the service reads (received_at)."""
    return datetime.now(UTC)


async def project_continuously(
    projector: Projector, read_models_changed: Callable[[], None] = lambda: None
) -> None:
    """Fold new deliveries as they are committed, off the request path, forever.

    `read_models_changed` is called after each batch that folded anything, and when the
    projections' positions or generations moved otherwise (a rebuild's swap, another process).
    """
    seen: object = None
    while True:
        try:
            folded = await projector.fold_new(PROJECTION_BATCH)
            state: object = None if folded else await projector.state_token()
        except Exception as exc:  # e.g. the database is locked by a rebuild, or unreachable
            logger.error("projection_batch_failed", error=str(exc))
            folded, state = 0, seen
        if folded or state != seen:
            read_models_changed()
            seen = state
        if folded < PROJECTION_BATCH:
            await projector.wait_for_appends(IDLE_POLL_SECONDS)


def build_app(
    settings: Settings,
    clock: Callable[[], datetime] = utc_now,
    writer_socket: Path | None = None,
) -> web.Application:
    """The whole service as an aiohttp application; storage opens on start-up.

    `writer_socket`: an HTTP worker of `serve --workers N` (SQLite), see projector.workers.
    """
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

    alert_loop: AlertLoop | None = None

    def read_models_changed() -> None:
        answers.read_models_changed()
        change_hub.read_models_changed()
        if alert_loop is not None:
            alert_loop.wake()

    storage = storage_for(
        settings.db,
        max_pending=settings.max_pending,
        on_read_models_changed=read_models_changed,
        on_batch=observed.commit_batch_size.observe,
        writer_socket=writer_socket,
    )
    if storage.shared_changes is not None:  # an HTTP worker: the writer process folds
        answers.follow(storage.shared_changes)
    change_hub = changes.add_change_stream(app, settings, storage.reads)
    app[STORAGE] = storage
    alert_loop = alert_loop_for(settings, storage, observed)
    app[api.READS] = storage.reads

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await storage.open()
        projector = asyncio.create_task(
            project_continuously(storage.projector, read_models_changed), name="projector"
        )
        watch.task = projector
        # Alerts are derived and sent by a task of their own: ingest never waits on them.
        alerting = None if alert_loop is None else asyncio.create_task(alert_loop.run())
        logger.info("storage_ready", db=storage.description)
        yield
        # Shutdown: requests have finished; stop folding, commit what is queued, close.
        tasks = [task for task in (projector, alerting) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await storage.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post(
        "/webhooks/refold",
        make_receiver(
            storage.log,
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
    metrics.install(app, settings, observed, storage, watch)
    return app

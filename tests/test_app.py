"""The composition root: its background projector stops when told to; shutdown closes cleanly."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from projector.app import build_app, project_continuously
from projector.config import Settings
from projector.storage.sqlite.adapter import SqliteProjector, SqliteStorage
from tests.support import AUTH


async def test_the_projector_stops_when_cancelled_just_as_a_commit_wakes_it(
    db_path: Path,
) -> None:
    """A cancel that lands with a wake-up is not swallowed, so shutdown cannot hang."""
    wake = asyncio.Event()
    caught_up = asyncio.Event()
    storage = SqliteStorage(db_path, max_pending=10, on_read_models_changed=lambda: None)
    await storage.open()
    try:
        folding = SqliteProjector(storage.log, wake)
        # Its first pass over the empty log reports the projections' state (the callback),
        # then, in the same step, it waits for a wake-up: when this test runs again, it waits.
        projector = asyncio.create_task(project_continuously(folding, caught_up.set))
        await asyncio.wait_for(caught_up.wait(), 10)
        assert not projector.done()
        awaiting, step = [], projector.get_coro()
        while step is not None:  # the chain of awaits down to the innermost one
            awaiting.append(getattr(step, "__qualname__", None))
            step = getattr(step, "cr_await", None)
        assert "Event.wait" in awaiting, awaiting
        wake.set()  # a commit wakes it ...
        projector.cancel()  # ... in the same loop step as shutdown cancels it
        done, _ = await asyncio.wait({projector}, timeout=5)
        assert projector in done, "the projector swallowed its cancellation"
        assert projector.cancelled()
    finally:
        await storage.close()


async def test_a_clean_shutdown_checkpoints_the_wal_into_the_database(settings: Settings) -> None:
    """After serving reads, shutdown leaves no WAL: the database file alone holds the log."""
    async with TestClient(TestServer(build_app(settings))) as client:
        answer = await client.get("/v1/projections", headers=AUTH)  # the readers have read
        assert answer.status == 200
        wal = settings.db.with_name(settings.db.name + "-wal")
        assert wal.exists()
    assert not wal.exists()

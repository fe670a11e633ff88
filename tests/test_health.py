"""GET /readyz on the whole app: ready only when the log takes writes and the projector keeps up."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from projector import health
from projector.answers import NotReady, Ready
from projector.app import build_app
from projector.config import load_settings
from projector.storage.sqlite import chain, log
from tests.support import READ_TOKEN, SIGNING_KEYS, signed

BODY = (
    b'{"linked_account_id":"12345","org_id":"o","environment":"live","type":"General",'
    b'"event":"Connection Expired","slug":"gmail","createdAt":"Tue, 02 Jun 2026 14:34:30 GMT"}'
)
FIXED_REASONS = {
    health.LOG_NOT_WRITABLE,
    health.LOG_NOT_READABLE,
    health.PROJECTOR_NOT_RUNNING,
    health.PROJECTIONS_LAGGING,
}


async def readiness(client: TestClient) -> tuple[int, dict[str, Any]]:
    """/readyz without any token; its body checked against the answer models."""
    answer = await client.get("/readyz")
    document = await answer.json()
    if answer.status == 200:
        Ready.model_validate(document)
    else:
        assert set(NotReady.model_validate(document).reasons) <= FIXED_REASONS
    return answer.status, document


def add_trigger(db: Path, sql: str) -> None:
    """Install a trigger from another connection, as a fault outside the service would act."""
    saboteur = sqlite3.connect(db)
    saboteur.execute(sql)
    saboteur.commit()
    saboteur.close()


REFUSE_INSERTS = (
    "CREATE TRIGGER refuse_inserts BEFORE INSERT ON deliveries"
    " BEGIN SELECT RAISE(ABORT, 'inserts refused by the test'); END"
)
STALL_PROJECTIONS = (
    "CREATE TRIGGER stall_projections BEFORE UPDATE ON projections"
    " BEGIN SELECT RAISE(ABORT, 'projection stalled by the test'); END"
)


async def post(client: TestClient) -> int:
    answer = await client.post("/webhooks/refold", data=BODY, headers=signed(BODY))
    return answer.status


async def test_a_healthy_server_is_ready_without_a_token(client: TestClient) -> None:
    assert await readiness(client) == (200, {"status": "ready"})
    assert await post(client) == 200
    assert await readiness(client) == (200, {"status": "ready"})


async def test_the_write_probe_leaves_the_log_unchanged(client: TestClient, db_path: Path) -> None:
    """With no recent commit readiness probes the write path, and rolls its row back."""
    for _ in range(3):
        assert await readiness(client) == (200, {"status": "ready"})
    assert await post(client) == 200
    conn = log.connect(db_path, readonly=True)
    try:
        assert log.head(conn) == 1
        assert chain.verify_chain(conn).intact
    finally:
        conn.close()


async def test_a_log_that_refuses_writes_is_not_ready_until_it_takes_them_again(
    client: TestClient, db_path: Path
) -> None:
    assert await post(client) == 200  # a recent commit succeeded...
    add_trigger(db_path, REFUSE_INSERTS)
    assert await post(client) == 503  # ...and then one failed
    assert await readiness(client) == (
        503,
        {"status": "not_ready", "reasons": [health.LOG_NOT_WRITABLE]},
    )
    add_trigger(db_path, "DROP TRIGGER refuse_inserts")
    assert await readiness(client) == (200, {"status": "ready"})


async def test_a_log_that_refuses_writes_before_any_delivery_is_not_ready(
    client: TestClient, db_path: Path
) -> None:
    add_trigger(db_path, REFUSE_INSERTS)
    with capture_logs() as logged:
        assert await readiness(client) == (
            503,
            {"status": "not_ready", "reasons": [health.LOG_NOT_WRITABLE]},
        )
    # The caller gets a fixed phrase; the operator's log gets what went wrong.
    assert [(e["event"], e["error"]) for e in logged if e["log_level"] == "warning"] == [
        ("readiness_write_probe_failed", "inserts refused by the test")
    ]


async def test_a_stopped_projector_is_not_ready(client: TestClient) -> None:
    watch = client.server.app[health.PROJECTOR]
    assert watch.task is not None
    watch.task.cancel()
    await asyncio.gather(watch.task, return_exceptions=True)
    assert await readiness(client) == (
        503,
        {"status": "not_ready", "reasons": [health.PROJECTOR_NOT_RUNNING]},
    )


async def lagging_client(aiohttp_client: Any, db_path: Path, max_lag: float) -> TestClient:
    """A server whose projections are stalled behind a delivery received an hour ago."""
    settings = load_settings(
        db=db_path,
        signing_keys=SIGNING_KEYS,
        read_tokens=READ_TOKEN,
        ready_max_lag_seconds=max_lag,
    )
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    client: TestClient = await aiohttp_client(build_app(settings, clock=lambda: an_hour_ago))
    add_trigger(db_path, STALL_PROJECTIONS)
    assert await post(client) == 200
    return client


async def test_a_projection_lagging_beyond_the_bound_is_not_ready(
    aiohttp_client: Any, db_path: Path
) -> None:
    client = await lagging_client(aiohttp_client, db_path, max_lag=30)
    assert await readiness(client) == (
        503,
        {"status": "not_ready", "reasons": [health.PROJECTIONS_LAGGING]},
    )


async def test_a_lag_within_the_configured_bound_is_ready(
    aiohttp_client: Any, db_path: Path
) -> None:
    client = await lagging_client(aiohttp_client, db_path, max_lag=4 * 3600)
    assert await readiness(client) == (200, {"status": "ready"})


async def test_every_reason_is_given_at_once_without_a_count(
    aiohttp_client: Any, db_path: Path
) -> None:
    client = await lagging_client(aiohttp_client, db_path, max_lag=30)
    add_trigger(db_path, REFUSE_INSERTS)
    assert await post(client) == 503
    client.server.app[health.PROJECTOR].task.cancel()  # type: ignore[union-attr]
    status, document = await readiness(client)
    assert status == 503
    assert document["reasons"] == [
        health.LOG_NOT_WRITABLE,
        health.PROJECTOR_NOT_RUNNING,
        health.PROJECTIONS_LAGGING,
    ]
    assert not any(character.isdigit() for character in str(document))


async def test_a_log_whose_status_cannot_be_read_is_not_ready(
    client: TestClient, db_path: Path
) -> None:
    add_trigger(db_path, "ALTER TABLE projections RENAME TO projections_moved_by_the_test")
    with capture_logs() as logged:
        assert await readiness(client) == (
            503,
            {"status": "not_ready", "reasons": [health.LOG_NOT_READABLE]},
        )
    assert ("readiness_status_unreadable", "warning") in [
        (e["event"], e["log_level"]) for e in logged
    ]

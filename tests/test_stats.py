"""projector.stats: deliveries per minute (stored and refused) and lag, at GET /v1/stats."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from projector.stats import WINDOW_MINUTES, DeliveryMinutes
from projector.storage.sqlite import log, replay
from tests.support import (
    AUTH,
    run_cli,
    service_env,
    signed,
    wait_projected,
)
from tests.test_metrics import connection_body, with_an_hour_old_backlog

WEBHOOK = "/webhooks/refold"


class Clock:
    """A clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def counts(minutes: DeliveryMinutes, last: int) -> list[tuple[int, int, int, int]]:
    return [(m.new, m.duplicate, m.flagged, m.refused) for m in minutes.last(last)]


def test_each_outcome_is_counted_in_its_own_minute_oldest_first() -> None:
    clock = Clock(1_800_000_000.0)  # 2027-01-15T08:00:00Z, the start of a minute
    minutes = DeliveryMinutes(clock)
    minutes.count("new")
    minutes.count("refused")
    clock.now += 60
    minutes.count("duplicate")
    minutes.count("flagged")
    minutes.count("flagged")
    assert counts(minutes, 3) == [(0, 0, 0, 0), (1, 0, 0, 1), (0, 1, 2, 0)]
    assert [m.minute for m in minutes.last(2)] == ["2027-01-15T08:00:00Z", "2027-01-15T08:01:00Z"]


def test_a_minute_older_than_the_window_is_forgotten_not_added_to() -> None:
    clock = Clock(1_800_000_000.0)
    minutes = DeliveryMinutes(clock)
    minutes.count("new")
    clock.now += WINDOW_MINUTES * 60  # the same slot of the ring, one hour later
    assert counts(minutes, WINDOW_MINUTES)[0] == (0, 0, 0, 0)
    minutes.count("refused")
    assert counts(minutes, WINDOW_MINUTES) == [(0, 0, 0, 0)] * (WINDOW_MINUTES - 1) + [(0, 0, 0, 1)]


async def post(client: TestClient, body: bytes, key: str | None = None) -> int:
    headers = signed(body) if key is None else signed(body, key)
    return (await client.post(WEBHOOK, data=body, headers=headers)).status


async def stats(client: TestClient, **params: str) -> dict[str, Any]:
    answer = await client.get("/v1/stats", params=params, headers=AUTH)
    assert answer.status == 200, await answer.text()
    return dict(await answer.json())


async def test_stats_count_stored_and_refused_deliveries_of_this_minute(
    client: TestClient,
) -> None:
    def this_minute() -> str:
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:00Z")

    first = this_minute()
    assert await post(client, connection_body()) == 200
    assert await post(client, connection_body()) == 200
    assert await post(client, connection_body(slug=None)) == 200
    assert await post(client, connection_body(), "pk_rotated_on_one_side_only") == 401
    assert await post(client, connection_body(), "pk_rotated_on_one_side_only") == 401
    answer = await stats(client)
    last = this_minute()
    per_minute = answer["deliveries_per_minute"]
    assert len(per_minute) == WINDOW_MINUTES
    assert per_minute[-1]["minute"] == last
    # Sent within one minute, or across one boundary: either way every count is there once.
    spanned = per_minute[-1:] if first == last else per_minute[-2:]
    totals = {k: sum(m[k] for m in spanned) for k in ("new", "duplicate", "flagged", "refused")}
    assert totals == {"new": 1, "duplicate": 1, "flagged": 1, "refused": 2}
    older = per_minute[: -len(spanned)]
    assert all(m["new"] + m["duplicate"] + m["flagged"] + m["refused"] == 0 for m in older)
    assert len((await stats(client, minutes="5"))["deliveries_per_minute"]) == 5


async def test_stats_give_each_projection_lag_zero_when_caught_up(client: TestClient) -> None:
    assert await post(client, connection_body()) == 200
    await wait_projected(client)
    answer = await stats(client)
    assert [(p["name"], p["lag_seconds"]) for p in answer["projections"]] == [
        ("connection_health", 0.0),
        ("workflow_runs", 0.0),
    ]


async def test_stats_give_the_age_of_the_oldest_unfolded_delivery(
    aiohttp_client: Any, db_path: Path
) -> None:
    client = await with_an_hour_old_backlog(aiohttp_client, db_path)
    for projection in (await stats(client))["projections"]:
        assert 3600 <= projection["lag_seconds"] < 2 * 3600


async def test_stats_refuse_a_bad_minutes_and_need_the_token(client: TestClient) -> None:
    for bad in ("0", "61", "x", "²", "-1", "100"):
        answer = await client.get("/v1/stats", params={"minutes": bad}, headers=AUTH)
        assert answer.status == 400
        error = (await answer.json())["error"]
        assert error["code"] == "invalid_minutes"
        assert "from 1 to 60" in error["message"]
    assert (await client.get("/v1/stats")).status == 401
    unknown = await client.get("/v1/stats", params={"minute": "5"}, headers=AUTH)
    assert (await unknown.json())["error"]["code"] == "unknown_parameter"


async def generations(client: TestClient) -> dict[str, int]:
    answer = await client.get("/v1/projections", headers=AUTH)
    return {p["name"]: p["generation"] for p in (await answer.json())["projections"]}


async def test_projections_answer_their_generation_and_a_rebuild_adds_one(
    client: TestClient, db_path: Path
) -> None:
    # A new database is built once from its (empty) log at start.
    assert await generations(client) == {"connection_health": 1, "workflow_runs": 1}
    assert await post(client, connection_body()) == 200
    rebuilt = await asyncio.to_thread(run_cli, "rebuild", env=service_env(db_path))
    assert rebuilt.returncode == 0, rebuilt.stderr
    # The server sees the swap on its next read; bounded.
    deadline = time.monotonic() + 10
    while (seen := await generations(client)) != {"connection_health": 2, "workflow_runs": 2}:
        assert time.monotonic() < deadline, f"generation after a rebuild: {seen}"
        await asyncio.sleep(0.05)


async def test_stats_say_when_each_projections_last_rebuild_was_swapped_in(
    client: TestClient, db_path: Path
) -> None:
    """The start-up build of a new database counts; a later rebuild replaces its time."""
    started = [p["last_rebuild_at"] for p in (await stats(client))["projections"]]
    assert len(started) == 2
    assert all(at is not None and at.endswith("Z") for at in started), started
    conn = log.connect(db_path)
    try:
        at = datetime(2026, 7, 1, 12, 30, 5, tzinfo=UTC)
        await asyncio.to_thread(replay.rebuild, conn, clock=lambda: at)
    finally:
        conn.close()
    deadline = time.monotonic() + 10  # the readers see the swap on their next read; bounded
    while (seen := [p["last_rebuild_at"] for p in (await stats(client))["projections"]]) != [
        "2026-07-01T12:30:05Z"
    ] * 2:
        assert time.monotonic() < deadline, seen
        await asyncio.sleep(0.05)


async def test_stats_check_an_environment_they_are_given(client: TestClient) -> None:
    """Both environments are counted together, but a typo is a 400, never ignored."""
    answer = await client.get("/v1/stats", params={"environment": "xyz"}, headers=AUTH)
    assert answer.status == 400
    assert (await answer.json())["error"]["code"] == "invalid_environment"
    fine = await client.get("/v1/stats", params={"environment": "test"}, headers=AUTH)
    assert fine.status == 200

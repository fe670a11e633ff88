"""Invariant 3 through the real log and SQLite: any arrival order gives the same read models.

The events below differ in the ways that once broke it: a flagged copy of a valid event
(it took the valid one's identity and hid it), the same event with another `type` (the
second was a "duplicate" and never folded), same-second ties, and runs whose events carry
different descriptive fields. The expected tables come from an oracle that folds only the
valid events, each once, in memory, so an order that is wrong in every permutation fails too.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from projector.events import ConnectionChange, WorkflowOutcome
from projector.fold import fold_connection, fold_workflow_run
from projector.readmodels import CONNECTION_HEALTH, WORKFLOW_RUNS
from projector.storage.sqlite import log, projection, replay
from projector.storage.sqlite.writer import WriteLane
from tests.storage_support import append_all, new_delivery, open_projected, read_models
from tests.support import AUTH, signed, wait_projected

ACCOUNT, SLUG, RUN = "12345", "gmail", "run_0001"
T = datetime(2026, 6, 2, 14, 34, 30, tzinfo=UTC)
EARLIER = datetime(2026, 6, 2, 14, 34, 29, tzinfo=UTC)


def _date(moment: datetime) -> str:
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")


def connection_body(event: str, at: datetime, **fields: Any) -> bytes:
    payload = {
        "linked_account_id": ACCOUNT,
        "org_id": "645270e37917442c4307297a",
        "environment": "live",
        "type": "General",
        "event": event,
        "slug": SLUG,
        "createdAt": _date(at),
        **fields,
    }
    return json.dumps({k: v for k, v in payload.items() if v is not None}).encode()


def workflow_body(event: str, **fields: Any) -> bytes:
    payload = {
        "linked_account_id": ACCOUNT,
        "instance_id": RUN,
        "workflow_id": "wf_1",
        "event": event,
        "environment": "live",
        **fields,
    }
    return json.dumps({k: v for k, v in payload.items() if v is not None}).encode()


@dataclass(frozen=True)
class Case:
    """One distinct event, all signed with the live key, and what the fold must make of it."""

    name: str
    body: bytes
    change: ConnectionChange | WorkflowOutcome | None  # None: flagged, never folded


def _connection(status: str, at: datetime, type_: str | None) -> ConnectionChange:
    return ConnectionChange("live", ACCOUNT, SLUG, status, at, type_)


def _run(status: str, name: str | None, config: str | None, wf: str = "wf_1") -> WorkflowOutcome:
    return WorkflowOutcome("live", RUN, ACCOUNT, status, wf, name, config)


CASES = (
    Case(
        "expired",
        connection_body("Connection Expired", T),
        _connection("expired", T, "General"),
    ),
    Case(
        "expired, named test: environment_mismatch",
        connection_body("Connection Expired", T, environment="test"),
        None,
    ),
    Case(
        "expired, same second, another type",
        connection_body("Connection Expired", T, type="Custom"),
        _connection("expired", T, "Custom"),
    ),
    Case(
        "expired, same second, no type",
        connection_body("Connection Expired", T, type=None),
        _connection("expired", T, None),
    ),
    Case(
        "created, same second: expired wins the tie",
        connection_body("Connection Created", T, type="Zeta"),
        _connection("connected", T, "Zeta"),
    ),
    Case(
        "deleted a second earlier",
        connection_body("Connection Deleted", EARLIER, type="Older"),
        _connection("deleted", EARLIER, "Older"),
    ),
    Case(
        "deleted at the same second, named test: environment_mismatch",
        connection_body("Connection Deleted", T, environment="test"),
        None,
    ),
    Case(
        "created later but with a createdAt no parser reads: invalid_field",
        connection_body("Connection Created", T, createdAt="yesterday"),
        None,
    ),
    Case(
        "errored",
        workflow_body("Workflow Errored", workflow_name="Sync", attempt=1),
        _run("ERRORED", "Sync", None),
    ),
    Case(
        "errored, named test: environment_mismatch",
        workflow_body("Workflow Errored", workflow_name="Sync", attempt=1, environment="test"),
        None,
    ),
    Case(
        "errored again, a genuine second failure with another config",
        workflow_body("Workflow Errored", workflow_name="Sync", attempt=2, config_id="cfg_b"),
        _run("ERRORED", "Sync", "cfg_b"),
    ),
    Case(
        "timed out, other name and workflow id",
        workflow_body("Workflow Timed Out", workflow_name="Alpha", workflow_id="wf_0"),
        _run("TIMED_OUT", "Alpha", None, "wf_0"),
    ),
    Case(
        "completed, with a config",
        workflow_body("Workflow Completed", workflow_name="Sync", config_id="cfg_a"),
        _run("COMPLETED", "Sync", "cfg_a"),
    ),
    Case(
        "completed, named test: environment_mismatch",
        workflow_body("Workflow Completed", workflow_name="Zulu", environment="test"),
        None,
    ),
    Case("an unknown workflow event: unknown_event", workflow_body("Workflow Paused"), None),
)


def expected_tables(cases: Sequence[Case]) -> dict[str, list[tuple[Any, ...]]]:
    """What the read models must hold: the valid events folded once each, in memory."""
    connection = run = None
    for case in cases:
        if isinstance(case.change, ConnectionChange):
            connection = fold_connection(connection, case.change)
        elif isinstance(case.change, WorkflowOutcome):
            run = fold_workflow_run(run, case.change)
    return {
        "connections": [] if connection is None else [CONNECTION_HEALTH.to_row(connection)],
        "workflow_runs": [] if run is None else [WORKFLOW_RUNS.to_row(run)],
    }


async def _append_through_the_lane(path: Path, batches: Sequence[Sequence[bytes]]) -> None:
    """As the server appends: the write lane, each batch's appends waiting together."""
    lane = WriteLane(path, 10_000, lambda projected: None, project=projection.project_appended)
    await lane.open()
    try:
        for batch in batches:
            await asyncio.gather(*(lane.append(new_delivery(body, "live")) for body in batch))
        # A commit that could not fold in its transaction leaves the rest to the projector.
        await lane.run(lambda conn: projection.catch_up_batch(conn, known=lane.take_committed()))
    finally:
        await lane.close()


def _batches(bodies: list[bytes], sizes: list[int]) -> list[list[bytes]]:
    batches, start = [], 0
    for size in sizes:
        if start < len(bodies):
            batches.append(bodies[start : start + size])
            start += size
    if start < len(bodies):
        batches.append(bodies[start:])
    return batches


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_order_of_valid_flagged_retyped_and_tied_events_gives_the_oracles_tables(
    data: st.DataObject,
) -> None:
    """Live fold, catch-up from the log, and rebuild all equal the oracle, in any order."""
    cases = data.draw(st.lists(st.sampled_from(CASES), min_size=1, unique=True), label="cases")
    repeats = data.draw(st.lists(st.sampled_from(cases), max_size=6), label="repeats")
    arrival = data.draw(st.permutations([c.body for c in [*cases, *repeats]]), label="order")
    sizes = data.draw(st.lists(st.integers(1, 5), max_size=len(arrival)), label="batches")
    expected = expected_tables(cases)
    with tempfile.TemporaryDirectory() as directory:
        live_path, logged_path = Path(directory) / "live.sqlite3", Path(directory) / "log.sqlite3"
        open_projected(live_path).close()
        asyncio.run(_append_through_the_lane(live_path, _batches(arrival, sizes)))
        conn = log.connect(live_path)
        try:
            assert read_models(conn) == expected, "live fold"
            assert {s.position for s in projection.statuses(conn)} == {len(arrival)}
            replay.rebuild(conn)
            assert read_models(conn) == expected, "rebuild"
        finally:
            conn.close()
        # Appended by another process: the projector reads and parses the log itself.
        conn = open_projected(logged_path)
        try:
            append_all(conn, [new_delivery(body, "live") for body in arrival])
            while projection.catch_up_batch(conn, limit=max(1, min(sizes, default=3))):
                pass
            assert read_models(conn) == expected, "catch-up from the log"
        finally:
            conn.close()


def test_the_oracle_holds_the_rules_the_cases_were_written_for() -> None:
    """The cases interact as intended: ties, types and flags all reach the oracle's answer."""
    tables = expected_tables(CASES)
    assert tables["connections"] == [
        ("live", ACCOUNT, SLUG, "expired", "2026-06-02T14:34:30Z", "General",
         "2026-06-02T14:34:29Z", "2026-06-02T14:34:30Z"),
    ]  # fmt: skip
    assert tables["workflow_runs"] == [
        ("live", RUN, ACCOUNT, "COMPLETED", "wf_1", "Sync", "cfg_b"),
    ]


# --- the reported break, over HTTP -------------------------------------------------------

EXPIRED_NAMED_TEST = connection_body("Connection Expired", T, environment="test")
EXPIRED = connection_body("Connection Expired", T)


async def _banner_after(client: TestClient, bodies: Sequence[bytes]) -> dict[str, Any]:
    answers = []
    for body in bodies:
        answer = await client.post("/webhooks/refold", data=body, headers=signed(body))
        assert answer.status == 200, await answer.text()
        answers.append(await answer.json())
    await wait_projected(client)
    banner = await client.get(f"/v1/accounts/{ACCOUNT}/connections", headers=AUTH)
    assert banner.status == 200
    return {"answers": answers, "banner": await banner.json()}


@pytest.mark.parametrize(
    "order",
    [[EXPIRED_NAMED_TEST, EXPIRED], [EXPIRED, EXPIRED_NAMED_TEST]],
    ids=["mismatched-copy-first", "mismatched-copy-after"],
)
async def test_an_environment_mismatch_copy_never_hides_the_valid_expiry_in_either_order(
    client: TestClient, order: list[bytes]
) -> None:
    seen = await _banner_after(client, order)
    assert [a["duplicate"] for a in seen["answers"]] == [False, False]
    assert seen["banner"]["needs_reconnect"] is True
    assert [c["status"] for c in seen["banner"]["connections"]] == ["expired"]


async def test_retries_of_the_mismatched_copy_are_duplicates_of_it_not_of_the_valid_event(
    client: TestClient,
) -> None:
    seen = await _banner_after(client, [EXPIRED_NAMED_TEST, EXPIRED, EXPIRED_NAMED_TEST, EXPIRED])
    assert [(a["seq"], a["duplicate"]) for a in seen["answers"]] == [
        (1, False),
        (2, False),
        (3, True),
        (4, True),
    ]
    first_copy = await client.get("/v1/events/3", headers=AUTH)
    first_valid = await client.get("/v1/events/4", headers=AUTH)
    assert (await first_copy.json())["duplicate_of"] == 1
    assert (await first_valid.json())["duplicate_of"] == 2

"""Running the folds over the log: catch-up, skipped deliveries and fold errors."""

from __future__ import annotations

import asyncio
import tempfile
from collections import defaultdict
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from projector import integrity
from projector.config import Settings
from projector.events import ConnectionChange
from projector.fold import ConnectionHealth, fold_connection
from projector.readmodels import CONNECTION_HEALTH, READ_MODELS, WORKFLOW_RUNS
from projector.sender import environment_of
from projector.storage.sqlite import log, projection, replay
from tests.storage_support import (
    BROKEN_BODY,
    BROKEN_SLUG,
    NAMES,
    SLIPPED_BODY,
    append_all,
    catch_up,
    delivery_of,
    fail_on_broken_slug,
    new_delivery,
    open_log,
    open_projected,
    positions,
    read_models,
    rebuilt,
    sample_deliveries,
    slip_in,
    without_seq_check,
)
from tests.support import (
    AUTH,
    KEY_BY_ENVIRONMENT,
    run_cli,
    sample_bodies,
    service_env,
    signed,
    wait_projected,
)


def test_prepare_reports_every_projection_stale_on_a_fresh_database(db_path: Path) -> None:
    """Nothing has been projected yet, so every projection needs a rebuild."""
    conn = open_log(db_path)
    assert sorted(projection.prepare(conn)) == NAMES


def test_prepare_reports_nothing_stale_after_a_rebuild(db_path: Path) -> None:
    """A rebuild records every projection at its current version."""
    conn = open_projected(db_path)
    assert projection.prepare(conn) == []
    versions = {model.name: model.version for model in READ_MODELS}
    assert [(s.name, s.version, s.position, s.errors) for s in projection.statuses(conn)] == [
        (name, versions[name], 0, 0) for name in NAMES
    ]


def test_prepare_reports_a_projection_whose_version_changed(db_path: Path) -> None:
    """A stored version that differs from the code's makes the projection stale."""
    conn = open_projected(db_path)
    conn.execute("UPDATE projections SET version = 0 WHERE name = 'workflow_runs'")
    assert projection.prepare(conn) == ["workflow_runs"]
    replay.rebuild(conn)
    assert projection.prepare(conn) == []


def test_catch_up_folds_the_sample_stream_and_reaches_the_head(db_path: Path) -> None:
    """After catch-up every position is the log head and the tables hold the sample's state."""
    conn = open_projected(db_path)
    log.append_batch(conn, sample_deliveries())
    head = log.head(conn)
    assert projection.catch_up_batch(conn, 500) == 500
    assert projection.catch_up_batch(conn, 500) == head - 500
    assert projection.catch_up_batch(conn, 500) == 0
    assert positions(conn) == dict.fromkeys(NAMES, head)
    assert conn.execute("SELECT count(*) FROM connections").fetchone()[0] > 0
    assert conn.execute("SELECT count(*) FROM workflow_runs").fetchone()[0] > 0
    expired = conn.execute(
        "SELECT status FROM connections WHERE environment = 'live'"
        " AND linked_account_id = '12345' AND slug = 'gmail'"
    ).fetchone()
    assert expired == ("expired",)


def test_incremental_catch_up_in_small_batches_equals_a_rebuild(
    db_path: Path, tmp_path: Path
) -> None:
    """Appending and folding 7 at a time gives the same tables as one rebuild of the log."""
    conn = open_projected(db_path)
    deliveries = sample_deliveries()
    for start in range(0, len(deliveries), 7):
        log.append_batch(conn, deliveries[start : start + 7])
        assert projection.catch_up_batch(conn, 7) == len(deliveries[start : start + 7])
    assert read_models(conn) == rebuilt(tmp_path / "fresh.sqlite3", deliveries)
    replay.rebuild(conn)
    assert read_models(conn) == rebuilt(tmp_path / "fresh2.sqlite3", deliveries)


def test_catch_up_with_a_limit_below_the_backlog_needs_several_batches(db_path: Path) -> None:
    """catch_up_batch reads at most `limit` deliveries; positions move by that much."""
    conn = open_projected(db_path)
    log.append_batch(conn, sample_deliveries()[:20])
    assert projection.catch_up_batch(conn, 7) == 7
    assert positions(conn) == dict.fromkeys(NAMES, 7)
    catch_up(conn, 7)
    assert positions(conn) == dict.fromkeys(NAMES, 20)


def test_flagged_deliveries_are_not_folded_duplicates_change_nothing_positions_pass_both(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry reaches the idempotent fold again; no flagged delivery reaches it."""
    folded: list[ConnectionChange] = []

    def counting_fold(state: ConnectionHealth | None, change: ConnectionChange) -> Any:
        folded.append(change)
        return fold_connection(state, change)

    counted = replace(CONNECTION_HEALTH, fold=counting_fold)
    monkeypatch.setattr(projection, "READ_MODELS", (counted, WORKFLOW_RUNS))
    conn = open_projected(db_path)
    expired_named_test = BROKEN_BODY.replace(b"Connection Created", b"Connection Expired")
    expired_named_test = expired_named_test.replace(b'"live"', b'"test"')
    append_all(
        conn,
        [
            new_delivery(BROKEN_BODY, "live"),
            new_delivery(BROKEN_BODY, "live"),  # a retry: duplicate of seq 1
            new_delivery(expired_named_test, "live"),  # environment_mismatch: flagged
            new_delivery(b"{not json", "live"),  # not_json: flagged
        ],
    )
    catch_up(conn)
    assert [c.status for c in folded] == ["connected", "connected"]
    assert positions(conn) == dict.fromkeys(NAMES, 4)
    assert conn.execute("SELECT status FROM connections").fetchall() == [("connected",)]


def test_positions_advance_over_a_log_of_only_skipped_deliveries(db_path: Path) -> None:
    """A batch with nothing to fold still moves every checkpoint to its last seq."""
    conn = open_projected(db_path)
    append_all(conn, [new_delivery(b"[]", "test"), new_delivery(b"[]", "test")])
    catch_up(conn)
    assert positions(conn) == dict.fromkeys(NAMES, 2)
    assert read_models(conn) == {"connections": [], "workflow_runs": []}


def test_catch_up_from_a_position_below_0_folds_from_seq_1_on(
    db_path: Path, tmp_path: Path
) -> None:
    """Catch-up reads only seq 1..head, the rows verify walks, even from an edited position."""
    deliveries = sample_deliveries()[:30]
    conn = open_projected(db_path)
    conn.close()
    without_seq_check(db_path)
    conn = log.connect(db_path)
    slip_in(conn, 0, delivery_of(SLIPPED_BODY))
    conn.execute("UPDATE projections SET position = -1")
    append_all(conn, deliveries)
    catch_up(conn, 7)
    assert positions(conn) == dict.fromkeys(NAMES, 30)
    assert read_models(conn) == rebuilt(tmp_path / "fresh.sqlite3", deliveries)


def test_a_fold_error_is_recorded_and_the_projector_goes_on(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failing event gets an error row; every other event is folded; positions reach head."""
    broken = replace(CONNECTION_HEALTH, fold=fail_on_broken_slug)
    monkeypatch.setattr(projection, "READ_MODELS", (broken, WORKFLOW_RUNS))
    conn = open_projected(db_path)
    deliveries = sample_deliveries()
    deliveries.insert(100, delivery_of(BROKEN_BODY))
    log.append_batch(conn, deliveries)
    catch_up(conn, 50)

    assert conn.execute("SELECT name, seq, error FROM projection_errors").fetchall() == [
        ("connection_health", 101, "RuntimeError: fold bug on brokenapp")
    ]
    errors = {s.name: s.errors for s in projection.statuses(conn)}
    assert errors == {"connection_health": 1, "workflow_runs": 0}
    assert positions(conn) == dict.fromkeys(NAMES, len(deliveries))
    expected = rebuilt(tmp_path / "fresh.sqlite3", deliveries)
    tables = read_models(conn)
    assert tables["workflow_runs"] == expected["workflow_runs"]
    assert tables["connections"] == [
        row for row in expected["connections"] if row[2] != BROKEN_SLUG
    ]


def test_a_rebuild_with_the_fixed_fold_clears_the_recorded_errors(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Errors belong to a generation: a rebuild with a working fold leaves none."""
    broken = replace(CONNECTION_HEALTH, fold=fail_on_broken_slug)
    monkeypatch.setattr(projection, "READ_MODELS", (broken, WORKFLOW_RUNS))
    conn = open_projected(db_path)
    deliveries = [*sample_deliveries()[:30], delivery_of(BROKEN_BODY)]
    log.append_batch(conn, deliveries)
    catch_up(conn)
    assert {s.name: s.errors for s in projection.statuses(conn)}["connection_health"] == 1

    monkeypatch.setattr(projection, "READ_MODELS", READ_MODELS)
    replay.rebuild(conn)
    assert {s.name: s.errors for s in projection.statuses(conn)} == dict.fromkeys(NAMES, 0)
    assert conn.execute("SELECT count(*) FROM projection_errors").fetchone()[0] == 0
    assert read_models(conn) == rebuilt(tmp_path / "fresh.sqlite3", deliveries)


# --- order independence, at storage level --------------------------------------------------


def _interesting_bodies(connections: int = 24, runs: int = 16) -> list[bytes]:
    """Sample bodies of the connections and runs with the most distinct events, in log order."""
    groups: dict[tuple[Any, ...], list[bytes]] = defaultdict(list)
    for body in sample_bodies():
        d = delivery_of(body)
        identity = (d.environment, d.kind, d.linked_account_id, d.slug, d.instance_id)
        if d.kind is not None and body not in groups[identity]:
            groups[identity].append(body)
    chosen: set[bytes] = set()
    for kind, wanted in (("connection", connections), ("workflow", runs)):
        taken = 0
        ranked = sorted((g for k, g in groups.items() if k[1] == kind), key=len, reverse=True)
        for group in ranked:
            if taken >= wanted:
                break
            chosen.update(group)
            taken += len(group)
    return [body for body in dict.fromkeys(sample_bodies()) if body in chosen]


BODIES = _interesting_bodies()


def _fold_in_order(bodies: list[bytes], batch: int) -> dict[str, list[tuple[Any, ...]]]:
    with tempfile.TemporaryDirectory() as directory:
        conn = open_projected(Path(directory) / "projector.sqlite3")
        try:
            append_all(conn, [delivery_of(body) for body in bodies])
            catch_up(conn, batch)
            return read_models(conn)
        finally:
            conn.close()


@cache
def _in_original_order() -> dict[str, list[tuple[Any, ...]]]:
    return _fold_in_order(BODIES, 500)


def test_the_order_independence_sample_has_events_that_interact() -> None:
    """The property below is only worth something if keys see several events each."""
    # The sample is fixed data: 42 distinct bodies over 12 keys, so keys see several events.
    assert len(BODIES) == 42
    tables = _in_original_order()
    assert (len(tables["connections"]), len(tables["workflow_runs"])) == (6, 6)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_any_arrival_order_with_repeats_folds_to_the_same_tables(data: st.DataObject) -> None:
    """Permuted, with random repeats and batch sizes, the read models equal the original order."""
    repeats = data.draw(st.lists(st.sampled_from(BODIES), max_size=12), label="repeats")
    order = data.draw(st.permutations([*BODIES, *repeats]), label="order")
    batch = data.draw(st.integers(min_value=1, max_value=16), label="batch")
    assert _fold_in_order(order, batch) == _in_original_order()


async def test_a_fold_bug_shows_in_the_api_and_logs_and_a_rebuild_by_fixed_code_clears_it(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served live: the bad event is counted and logged, the rest folded; `rebuild` then fixes."""
    broken = replace(CONNECTION_HEALTH, fold=fail_on_broken_slug)
    monkeypatch.setattr(projection, "READ_MODELS", (broken, WORKFLOW_RUNS))
    bodies = [*sample_bodies()[:20], BROKEN_BODY]
    with capture_logs() as logged:
        for body in bodies:
            environment = environment_of(body, "test")
            answer = await client.post(
                "/webhooks/refold", data=body, headers=signed(body, KEY_BY_ENVIRONMENT[environment])
            )
            assert answer.status == 200
        state = await wait_projected(client)
    errors = {p["name"]: p["errors"] for p in state["projections"]}  # type: ignore[attr-defined]
    assert errors == {"connection_health": 1, "workflow_runs": 0}
    failures = [line for line in logged if line["event"] == "fold_failed"]
    assert [(f["projection"], f["seq"]) for f in failures] == [("connection_health", 21)]
    banner = "/v1/accounts/acct_broken/connections?environment=live"
    before = await (await client.get(banner, headers=AUTH)).json()
    assert BROKEN_SLUG not in [c["slug"] for c in before["connections"]]

    # The fix ships: `projector rebuild` runs the real, working fold beside the live server.
    done = await asyncio.to_thread(run_cli, "rebuild", env=service_env(settings.db))
    assert done.returncode == 0, done.stderr
    state = await (await client.get("/v1/projections", headers=AUTH)).json()
    assert [p["errors"] for p in state["projections"]] == [0, 0]
    # The server sees the swap at its projector's next poll (within about a second), and
    # only then drops the answers it kept: poll, bounded.
    for _ in range(100):
        after = await (await client.get(banner, headers=AUTH)).json()
        if BROKEN_SLUG in [c["slug"] for c in after["connections"]]:
            break
        await asyncio.sleep(0.05)
    assert BROKEN_SLUG in [c["slug"] for c in after["connections"]]


def test_catching_up_from_the_lanes_known_changes_equals_reading_the_log(
    db_path: Path, tmp_path: Path
) -> None:
    """The live short cut (changes handed over by the writer) folds what a re-parse folds."""
    deliveries = sample_deliveries()
    conn = open_projected(db_path)
    for start in range(0, len(deliveries), 40):
        batch = deliveries[start : start + 40]
        appended = log.append_batch(conn, batch)
        known = {a.seq: log.Committed(d.change) for a, d in zip(appended, batch, strict=True)}
        assert projection.catch_up_batch(conn, 500, known) == len(batch)
    assert read_models(conn) == rebuilt(tmp_path / "fresh.sqlite3", deliveries)


def test_known_changes_that_miss_part_of_a_batch_fall_back_to_the_log(db_path: Path) -> None:
    """Deliveries appended elsewhere (not in `known`) are read and parsed, not skipped."""
    deliveries = sample_deliveries()[:50]
    conn = open_projected(db_path)
    appended = log.append_batch(conn, deliveries)
    partial = {a.seq: log.Committed(None) for a in appended[:10]}
    projection.catch_up_batch(conn, 500, partial)
    other = open_projected(db_path.with_name("other.sqlite3"))
    log.append_batch(other, deliveries)
    catch_up(other)
    assert read_models(conn) == read_models(other)


def test_catch_up_stops_before_a_batch_that_holds_a_gap_and_never_folds_past_it(
    db_path: Path,
) -> None:
    """The projector stops at a missing seq (the error names it) and folds nothing beyond."""
    conn = open_projected(db_path)
    log.append_batch(conn, sample_deliveries()[:20])
    slip_in(conn, 25, delivery_of(SLIPPED_BODY))
    with pytest.raises(integrity.LogNotIntact, match="no row with seq 21"):
        catch_up(conn, 7)
    assert positions(conn) == dict.fromkeys(NAMES, 14)  # two whole batches of 7 before the gap
    assert "acct_slipped" not in {row[1] for row in read_models(conn)["connections"]}

"""Read queries on read-only connections, against a log populated from the sample stream."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projector import answers
from projector.cursors import InvalidCursor, encode_cursor
from projector.storage.queries import SQLITE, SqlReads, banner_json
from projector.storage.sqlite import log, readers
from projector.storage.sqlite.readers import ReaderPool
from tests.storage_support import ODD_BODY, catch_up, direct, new_delivery, open_log, open_projected

ENVIRONMENTS = ("live", "test")


@pytest.fixture
async def reader(populated: Path) -> AsyncIterator[SqlReads]:
    async with ReaderPool(populated) as pool:
        yield SqlReads(pool.fetch, SQLITE)


@pytest.mark.parametrize("seq", [2**63, 10**30])
async def test_an_audit_cursor_beyond_sqlite_integers_is_an_invalid_cursor(
    reader: SqlReads, seq: int
) -> None:
    """A well-formed cursor whose int SQLite cannot hold is refused, not an OverflowError."""
    with pytest.raises(InvalidCursor):
        await reader.audit_events("live", None, None, 0, 5, encode_cursor(seq))


# --- connections -----------------------------------------------------------------------------


async def test_an_unknown_account_has_no_connections_and_needs_no_reconnect(
    account_reads: SqlReads,
) -> None:
    """account_connections answers an empty list for an account never seen."""
    answer = await account_reads.account_connections("live", "nobody-at-all")
    assert answer.connections == []
    assert answer.needs_reconnect is False
    assert (answer.linked_account_id, answer.environment) == ("nobody-at-all", "live")


async def test_needs_reconnect_is_true_exactly_when_a_connection_is_expired(
    account_reads: SqlReads, populated: Path
) -> None:
    """For every account, the banner flag equals 'some connection is expired'."""
    accounts = direct(
        populated,
        "SELECT environment, linked_account_id, max(status = 'expired') FROM connections"
        " GROUP BY environment, linked_account_id",
    )
    assert {flag for _, _, flag in accounts} == {0, 1}
    for environment, account, expired in accounts:
        answer = await account_reads.account_connections(environment, account)
        assert answer.needs_reconnect is bool(expired), (environment, account)
        assert answer.connections
        assert all(c.needs_reconnect is (c.status == "expired") for c in answer.connections)
        assert [c.slug for c in answer.connections] == sorted(c.slug for c in answer.connections)


async def test_account_connections_match_the_connections_table(
    account_reads: SqlReads, populated: Path
) -> None:
    """Each connection's status and times are those the fold stored."""
    answer = await account_reads.account_connections("live", "12345")
    rows = direct(
        populated,
        "SELECT slug, status, status_since, first_seen, last_seen FROM connections"
        " WHERE environment = 'live' AND linked_account_id = '12345' ORDER BY slug",
    )
    assert [
        (c.slug, c.status, c.status_since, c.first_seen, c.last_event_at)
        for c in answer.connections
    ] == rows
    assert ("gmail", "expired") in [(c.slug, c.status) for c in answer.connections]


async def test_the_banner_json_is_the_answer_model_rendered_byte_for_byte(
    account_reads: SqlReads, populated: Path
) -> None:
    """The API sends account_connections_json: every account's bytes equal the model's JSON."""
    accounts = direct(populated, "SELECT DISTINCT environment, linked_account_id FROM connections")
    for environment, account in [*accounts, ("live", "nobody-at-all")]:
        model = await account_reads.account_connections(environment, account)
        body = await account_reads.account_connections_json(environment, account)
        assert body == model.model_dump_json().encode(), (environment, account)


@settings(max_examples=300, deadline=None)
@given(
    environment=st.text(),
    account=st.text(),
    rows=st.lists(
        st.tuples(
            st.text(),
            st.sampled_from(["connected", "expired", "deleted"]),
            st.text(),
            st.none() | st.text(),
            st.text(),
            st.text(),
        ),
        max_size=4,
    ),
)
def test_banner_json_writes_any_text_as_pydantic_does(
    environment: str, account: str, rows: list[tuple[Any, ...]]
) -> None:
    """Escapes, non-ASCII, control characters and null render alike on both paths."""
    connections = [
        answers.AccountConnection.model_construct(
            slug=slug,
            status=status,
            status_since=since,
            type=type_,
            needs_reconnect=status == "expired",
            first_seen=first,
            last_event_at=last,
        )
        for slug, status, since, type_, first, last in rows
    ]
    model = answers.AccountConnections.model_construct(
        linked_account_id=account,
        environment=environment,
        needs_reconnect=any(c.needs_reconnect for c in connections),
        connections=connections,
    )
    assert banner_json(environment, account, rows) == model.model_dump_json().encode()


async def walk_connections(
    reader: SqlReads,
    environment: str,
    status: str | None = None,
    slug: str | None = None,
    limit: int = 5,
) -> list[tuple[str, str, str]]:
    """Every page of list_connections, concatenated."""
    seen: list[tuple[str, str, str]] = []
    cursor = None
    while True:
        page = await reader.list_connections(environment, status, slug, limit, cursor)
        assert len(page.connections) <= limit
        seen += [(c.linked_account_id, c.slug, c.status) for c in page.connections]
        if page.next_cursor is None:
            return seen
        assert len(page.connections) == limit
        cursor = page.next_cursor


@pytest.mark.parametrize("environment", ENVIRONMENTS)
async def test_list_connections_pages_walk_every_connection_once_in_order(
    reader: SqlReads, populated: Path, environment: str
) -> None:
    """Pages of 5 cover every connection exactly once, by (account, slug), then stop."""
    expected = direct(
        populated,
        "SELECT linked_account_id, slug, status FROM connections WHERE environment = ?"
        " ORDER BY linked_account_id, slug",
        environment,
    )
    assert len(expected) > 10
    assert await walk_connections(reader, environment) == expected


@pytest.mark.parametrize("status", ["connected", "expired", "deleted"])
async def test_list_connections_status_filter_returns_only_that_status(
    reader: SqlReads, populated: Path, status: str
) -> None:
    """A status filter returns all and only the connections in that status."""
    expected = direct(
        populated,
        "SELECT linked_account_id, slug, status FROM connections"
        " WHERE environment = 'live' AND status = ? ORDER BY linked_account_id, slug",
        status,
    )
    assert expected
    assert await walk_connections(reader, "live", status=status, limit=3) == expected


async def test_list_connections_slug_filter_returns_only_that_app(
    reader: SqlReads, populated: Path
) -> None:
    """A slug filter returns all and only that app's connections."""
    found = await walk_connections(reader, "test", slug="hubspot", limit=2)
    assert found
    assert {slug for _, slug, _ in found} == {"hubspot"}
    count = direct(
        populated,
        "SELECT count(*) FROM connections WHERE environment = 'test' AND slug = 'hubspot'",
    )
    assert len(found) == count[0][0]


async def test_list_connections_refuses_a_cursor_of_another_list(
    reader: SqlReads,
) -> None:
    """An audit cursor (an int) is not a connections cursor (two strings)."""
    with pytest.raises(InvalidCursor):
        await reader.list_connections("live", None, None, 5, encode_cursor(12))


# --- workflow runs ---------------------------------------------------------------------------


def busiest_account(path: Path, environment: str) -> str:
    rows = direct(
        path,
        "SELECT linked_account_id FROM workflow_runs WHERE environment = ?"
        " GROUP BY linked_account_id ORDER BY count(*) DESC, linked_account_id LIMIT 1",
        environment,
    )
    return str(rows[0][0])


async def walk_runs(
    reader: SqlReads, environment: str, account: str, status: str | None, limit: int
) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    cursor = None
    while True:
        page = await reader.account_runs(environment, account, status, None, limit, cursor)
        assert len(page.runs) <= limit
        seen += [(r.instance_id, r.status) for r in page.runs]
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


async def test_account_runs_pages_walk_every_run_once_in_instance_order(
    reader: SqlReads, populated: Path
) -> None:
    """Pages cover all of an account's runs by instance_id, statuses in lower case."""
    account = busiest_account(populated, "live")
    expected = direct(
        populated,
        "SELECT instance_id, lower(status) FROM workflow_runs"
        " WHERE environment = 'live' AND linked_account_id = ? ORDER BY instance_id",
        account,
    )
    assert len(expected) > 2
    assert await walk_runs(reader, "live", account, None, 2) == expected


@pytest.mark.parametrize("status", ["completed", "errored", "stopped", "timed_out"])
async def test_account_runs_status_filter_takes_and_gives_lower_case(
    reader: SqlReads, populated: Path, status: str
) -> None:
    """Filtering by a lower-case status returns only runs in it, reported in lower case."""
    rows = direct(
        populated,
        "SELECT environment, linked_account_id, count(*) FROM workflow_runs WHERE status = ?"
        " GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2 LIMIT 1",
        status.upper(),
    )
    assert rows
    environment, account, count = rows[0]
    found = await walk_runs(reader, environment, account, status, 1)
    assert len(found) == count
    assert {s for _, s in found} == {status}


async def test_workflow_run_lists_its_deliveries_in_seq_order_with_duplicates_marked(
    reader: SqlReads, populated: Path
) -> None:
    """Every delivery of the run, repeats included and flagged duplicate, in log order."""
    environment, instance = direct(
        populated,
        "SELECT environment, instance_id FROM deliveries WHERE instance_id IS NOT NULL"
        " AND duplicate_of IS NOT NULL ORDER BY seq LIMIT 1",
    )[0]
    answer = await reader.workflow_run(environment, instance, 1000, None)
    assert answer is not None
    expected = direct(
        populated,
        "SELECT seq, event, duplicate_of IS NOT NULL FROM deliveries"
        " WHERE environment = ? AND instance_id = ? ORDER BY seq",
        environment,
        instance,
    )
    assert [(d.seq, d.event, d.duplicate) for d in answer.deliveries] == [
        (seq, event, bool(dup)) for seq, event, dup in expected
    ]
    assert any(d.duplicate for d in answer.deliveries)
    assert answer.instance_id == instance
    assert answer.status == answer.status.lower()


async def test_workflow_run_of_an_unknown_instance_is_none(reader: SqlReads) -> None:
    """No run, no answer."""
    assert await reader.workflow_run("live", "000000000000000000000000", 1000, None) is None


async def test_workflow_run_is_scoped_to_its_environment(reader: SqlReads, populated: Path) -> None:
    """A run of one environment is unknown in the other."""
    environment, instance = direct(
        populated, "SELECT environment, instance_id FROM workflow_runs LIMIT 1"
    )[0]
    other = "test" if environment == "live" else "live"
    assert await reader.workflow_run(environment, instance, 1000, None) is not None
    assert await reader.workflow_run(other, instance, 1000, None) is None


# --- audit -----------------------------------------------------------------------------------


async def walk_audit(
    reader: SqlReads,
    environment: str,
    account: str | None = None,
    event: str | None = None,
    after: int = 0,
    limit: int = 37,
) -> list[int]:
    seqs: list[int] = []
    cursor = None
    while True:
        page = await reader.audit_events(environment, account, event, after, limit, cursor)
        assert len(page.events) <= limit
        assert all(e.environment == environment for e in page.events)
        seqs += [e.seq for e in page.events]
        if page.next_cursor is None:
            return seqs
        cursor = page.next_cursor


def logged_seqs(db: Path, where: str, *params: object) -> list[int]:
    """The seqs of the log rows matching `where`, read straight from the file."""
    sql = f"SELECT seq FROM deliveries WHERE {where} ORDER BY seq"
    return [row[0] for row in direct(db, sql, *params)]


@pytest.mark.parametrize("environment", ENVIRONMENTS)
async def test_audit_events_pages_return_every_delivery_of_the_environment_in_order(
    reader: SqlReads, populated: Path, environment: str
) -> None:
    """Across pages, exactly the environment's deliveries, duplicates and flagged ones too."""
    expected = logged_seqs(populated, "environment = ?", environment)
    assert await walk_audit(reader, environment) == expected


async def test_audit_events_after_starts_past_the_given_seq(
    reader: SqlReads, populated: Path
) -> None:
    """`after` skips every delivery up to and including that seq."""
    expected = logged_seqs(populated, "environment = 'live' AND seq > 400")
    assert await walk_audit(reader, "live", after=400, limit=10) == expected


async def test_audit_events_event_filter_returns_only_that_event(
    reader: SqlReads, populated: Path
) -> None:
    """An event filter returns all and only the deliveries of that event."""
    expected = logged_seqs(populated, "environment = 'live' AND event = 'Connection Expired'")
    assert expected
    assert await walk_audit(reader, "live", event="Connection Expired", limit=5) == expected


async def test_audit_events_account_filter_returns_only_that_account(
    reader: SqlReads, populated: Path
) -> None:
    """An account filter returns all and only that account's deliveries."""
    expected = logged_seqs(populated, "environment = 'live' AND linked_account_id = '12345'")
    assert expected
    assert await walk_audit(reader, "live", account="12345", limit=3) == expected


async def test_audit_events_report_duplicates_flags_and_payloads(
    reader: SqlReads, populated: Path
) -> None:
    """Each event carries duplicate, flags and the parsed payload (None when not JSON)."""
    page = await reader.audit_events("live", None, None, 0, 1000, None)
    rows = direct(
        populated,
        "SELECT seq, duplicate_of IS NOT NULL, flags, body FROM deliveries"
        " WHERE environment = 'live' ORDER BY seq",
    )
    assert len(page.events) == len(rows)
    for event, (seq, duplicate, flags, body) in zip(page.events, rows, strict=True):
        assert (event.seq, event.duplicate) == (seq, bool(duplicate))
        assert event.flags == json.loads(flags)
        if body == ODD_BODY:
            assert event.payload is None
            assert event.flags == ["not_json"]
        else:
            assert event.payload == json.loads(body)


async def test_audit_event_body_base64_decodes_to_the_exact_bytes(
    reader: SqlReads, populated: Path
) -> None:
    """The detail gives back the stored bytes, even when they are not UTF-8."""
    for seq, body in direct(populated, "SELECT seq, body FROM deliveries WHERE seq IN (1, 537)"):
        detail = await reader.audit_event("live", seq)
        assert detail is not None
        assert base64.b64decode(detail.body_base64) == body
    odd = await reader.audit_event("live", 537)
    assert odd is not None
    assert base64.b64decode(odd.body_base64) == ODD_BODY
    assert (odd.signed_as, odd.headers) == ("raw", {"content-type": "application/json"})


async def test_audit_event_of_another_environment_or_unknown_seq_is_none(
    reader: SqlReads,
) -> None:
    """A seq is found only in its own environment."""
    assert await reader.audit_event("live", 537) is not None
    assert await reader.audit_event("test", 537) is None
    assert await reader.audit_event("live", 10_000) is None


async def test_audit_event_of_a_repeat_names_the_delivery_it_repeats(
    reader: SqlReads, populated: Path
) -> None:
    """duplicate_of in the detail is the first seq of the same event."""
    environment, seq, first = direct(
        populated,
        "SELECT environment, seq, duplicate_of FROM deliveries"
        " WHERE duplicate_of IS NOT NULL ORDER BY seq LIMIT 1",
    )[0]
    detail = await reader.audit_event(environment, seq)
    assert detail is not None
    assert (detail.duplicate, detail.duplicate_of) == (True, first)


# --- audit filters by flag -------------------------------------------------------------------

# Flagged twice: named the test environment under the live key, and no slug.
TWO_FLAGS = (
    b'{"linked_account_id":"acct_two","environment":"test","event":"Connection Expired",'
    b'"createdAt":"Tue, 07 Nov 2023 08:38:33 GMT"}'
)


@pytest.fixture
async def flag_pool(populated: Path) -> AsyncIterator[ReaderPool]:
    """One reader connection on the populated log plus one delivery carrying two flags."""
    conn = open_log(populated)
    log.append_batch(conn, [new_delivery(TWO_FLAGS, "live")])
    conn.close()
    async with ReaderPool(populated, size=1) as pool:
        yield pool


@pytest.fixture
def flag_reader(flag_pool: ReaderPool) -> SqlReads:
    return SqlReads(flag_pool.fetch, SQLITE)


def flags_by_seq(db: Path, environment: str) -> dict[int, list[str]]:
    """Each delivery's flags, read straight from the file."""
    sql = "SELECT seq, flags FROM deliveries WHERE environment = ? ORDER BY seq"
    return {seq: json.loads(flags) for seq, flags in direct(db, sql, environment)}


async def walk_flags(
    reader: SqlReads,
    environment: str,
    flagged: bool | None = None,
    flag: str | None = None,
    limit: int = 7,
) -> list[int]:
    seqs: list[int] = []
    cursor = None
    for _ in range(1000):
        page = await reader.audit_events(
            environment, None, None, 0, limit, cursor, flagged=flagged, flag=flag
        )
        seqs += [e.seq for e in page.events]
        if page.next_cursor is None:
            return seqs
        cursor = page.next_cursor
    raise AssertionError("the pages did not end")


@pytest.mark.parametrize("environment", ENVIRONMENTS)
async def test_flagged_true_lists_exactly_the_flagged_deliveries_and_false_the_clean_ones(
    flag_reader: SqlReads, populated: Path, environment: str
) -> None:
    logged = flags_by_seq(populated, environment)
    flagged = [seq for seq, flags in logged.items() if flags]
    assert flagged
    assert await walk_flags(flag_reader, environment, flagged=True) == flagged
    assert await walk_flags(flag_reader, environment, flagged=False, limit=100) == [
        seq for seq, flags in logged.items() if not flags
    ]


@pytest.mark.parametrize(
    "flag", ["not_json", "unknown_event", "missing_field:slug", "environment_mismatch"]
)
async def test_a_flag_filter_lists_exactly_the_deliveries_carrying_that_flag(
    flag_reader: SqlReads, populated: Path, flag: str
) -> None:
    logged = flags_by_seq(populated, "live")
    wanted = [seq for seq, flags in logged.items() if flag in flags]
    assert wanted
    assert await walk_flags(flag_reader, "live", flag=flag, limit=2) == wanted
    assert await walk_flags(flag_reader, "live", flagged=True, flag=flag) == wanted
    assert await walk_flags(flag_reader, "live", flagged=False, flag=flag) == []


async def test_a_delivery_with_two_flags_is_found_by_each_of_them(
    flag_reader: SqlReads, populated: Path
) -> None:
    (two,) = [s for s, f in flags_by_seq(populated, "live").items() if len(f) == 2]
    for flag in ("environment_mismatch", "missing_field:slug"):
        assert two in await walk_flags(flag_reader, "live", flag=flag)


@pytest.mark.parametrize("part", ["missing_field", "missing_field:slu", "slug", "field:slug"])
async def test_a_flag_filter_matches_whole_flags_never_part_of_one(
    flag_reader: SqlReads, populated: Path, part: str
) -> None:
    """missing_field:slug is stored, and a substring match would find it under each `part`."""
    assert any("missing_field:slug" in f for f in flags_by_seq(populated, "live").values())
    assert await walk_flags(flag_reader, "live", flag=part) == []


@pytest.mark.parametrize(("flagged", "flag"), [(True, None), (None, "unknown_event")])
async def test_flag_filters_read_the_index_of_flagged_deliveries_not_the_whole_log(
    flag_pool: ReaderPool, populated: Path, flagged: bool | None, flag: str | None
) -> None:
    """The plan SQLite makes for the very statement the query runs uses deliveries_flagged."""
    statements: list[str] = []
    async with flag_pool.connection() as conn:  # the pool's only connection
        await conn.set_trace_callback(statements.append)
        try:
            await SqlReads(flag_pool.fetch, SQLITE).audit_events(
                "live", None, None, 0, 10, None, flagged=flagged, flag=flag
            )
        finally:
            await conn.set_trace_callback(None)
    (statement,) = [s for s in statements if "FROM deliveries" in s]
    plan = direct(populated, f"EXPLAIN QUERY PLAN {statement}")
    steps = " | ".join(str(row[-1]) for row in plan)
    assert "USING INDEX deliveries_flagged" in steps, steps


# --- fold errors -----------------------------------------------------------------------------


async def test_fold_errors_list_the_current_generation_only_by_seq_with_each_event(
    populated: Path,
) -> None:
    """Errors an earlier generation recorded went with its tables; pages follow seq."""
    conn = open_log(populated)
    (generation,) = conn.execute(
        "SELECT generation FROM projections WHERE name = 'connection_health'"
    ).fetchone()
    with log.transaction(conn):
        conn.executemany(
            "INSERT INTO projection_errors (name, generation, seq, error) VALUES (?, ?, ?, ?)",
            [
                ("connection_health", generation, 9, "KeyError: 'now'"),
                ("connection_health", generation, 4, "KeyError: 'then'"),
                ("connection_health", generation - 1, 5, "KeyError: 'old generation'"),
                ("workflow_runs", generation, 6, "KeyError: 'other projection'"),
            ],
        )
    conn.close()
    wanted = [(4, "KeyError: 'then'"), (9, "KeyError: 'now'")]
    events = dict(direct(populated, "SELECT seq, event FROM deliveries WHERE seq IN (4, 9)"))
    environments = dict(direct(populated, "SELECT seq, environment FROM deliveries"))
    async with ReaderPool(populated) as pool:
        reader = SqlReads(pool.fetch, SQLITE)
        first = await reader.fold_errors("connection_health", 1, None)
        assert first.next_cursor is not None
        rest = await reader.fold_errors("connection_health", 1, first.next_cursor)
        assert rest.next_cursor is None
        whole = await reader.fold_errors("connection_health", 100, None)
    assert first.errors + rest.errors == whole.errors
    assert [(e.seq, e.error) for e in whole.errors] == wanted
    assert [(e.event, e.environment) for e in whole.errors] == [
        (events[seq], environments[seq]) for seq, _ in wanted
    ]
    assert whole.projection == "connection_health"


# --- projections -----------------------------------------------------------------------------


async def test_projection_states_report_the_log_head_and_caught_up_positions(
    reader: SqlReads, populated: Path
) -> None:
    """log_head is the number of deliveries; every projection has reached it without errors."""
    count = direct(populated, "SELECT count(*) FROM deliveries")[0][0]
    states = await reader.projection_states()
    assert states.log_head == count == 537
    assert [(p.name, p.position, p.errors) for p in states.projections] == [
        ("connection_health", count, 0),
        ("workflow_runs", count, 0),
    ]


# --- one snapshot per answer ------------------------------------------------------------------

RUN = "30000000000000000000c33"


def run_event(status: str) -> bytes:
    return json.dumps(
        {"linked_account_id": "acct_snap", "instance_id": RUN, "workflow_id": "wf",
         "event": f"Workflow {status.title()}", "status": status, "environment": "live"}
    ).encode()  # fmt: skip


async def test_a_run_and_its_deliveries_are_read_from_one_snapshot(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delivery appended and folded while the answer is read is in neither part, or both."""
    writer = open_projected(db_path)
    log.append_batch(writer, [new_delivery(run_event("ERRORED"), "live")])
    catch_up(writer)
    fetch_rows, landed = readers.fetch_rows, []

    async def fetch_then_complete_the_run(
        conn: aiosqlite.Connection, sql: str, *params: Any
    ) -> Any:
        rows = await fetch_rows(conn, sql, *params)
        if not landed:  # the first read of the answer is done: another request completes the run
            landed.extend(log.append_batch(writer, [new_delivery(run_event("COMPLETED"), "live")]))
            catch_up(writer)
        return rows

    monkeypatch.setattr(readers, "fetch_rows", fetch_then_complete_the_run)
    async with ReaderPool(db_path) as pool:
        reads = SqlReads(pool.fetch, SQLITE)
        during = await reads.workflow_run("live", RUN, 100, None)
        after = await reads.workflow_run("live", RUN, 100, None)
    assert [a.seq for a in landed] == [2]
    assert during is not None
    assert after is not None
    assert (during.status, [d.status for d in during.deliveries]) == ("errored", ["errored"])
    assert (after.status, [d.status for d in after.deliveries]) == (
        "completed",
        ["errored", "completed"],
    )

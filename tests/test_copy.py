"""`projector copy`: a log carried between SQLite and PostgreSQL, row for row, resumably."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from projector.logcopy import copy_log, run_copy
from projector.readmodels import READ_MODELS
from projector.storage.engine import open_maintenance, open_reads
from projector.storage.location import Location, PostgresUrl
from projector.storage.port import Maintenance
from projector.storage.rows import StoredRow
from projector.storage.sqlite import log
from tests.postgres_support import query
from tests.storage_support import ODD_BODY, new_delivery, open_log, populated_log, sample_deliveries
from tests.support import run_cli, service_env

ENVIRONMENTS = ("test", "live")
PASSWORD = "c0py-s3cret"  # the server trusts 127.0.0.1: a password is accepted, never needed


def with_password(url: PostgresUrl) -> str:
    """`url` (postgresql://postgres@host/db) with a password in it, as a deployment has."""
    return url.url.replace("://postgres@", f"://postgres:{PASSWORD}@", 1)


def arg(location: Location) -> str:
    return location.url if isinstance(location, PostgresUrl) else str(location)


def copy_cli(source: Location | str, destination: Location | str) -> Any:
    """`projector copy` as a user runs it: a subprocess, stdout not a terminal."""
    ends = [e if isinstance(e, str) else arg(e) for e in (source, destination)]
    return run_cli("copy", *ends, env=service_env(Path("unused.sqlite3")))


def verify_cli(location: Location) -> Any:
    return run_cli("verify", env=service_env(Path(), PROJECTOR_DB=arg(location)))


async def stored(location: Location) -> list[StoredRow]:
    """Every row of the log at `location`, exactly as stored."""
    maintenance = await open_maintenance(location, readonly=True)
    try:
        return await maintenance.stored_rows(0, 100_000)
    finally:
        await maintenance.close()


async def head(location: Location) -> tuple[int, str]:
    maintenance = await open_maintenance(location, readonly=True)
    try:
        return await maintenance.head()
    finally:
        await maintenance.close()


async def api_answers(location: Location) -> dict[str, Any]:
    """What the query API answers on `location`: every list, account, run and event detail."""
    found: dict[str, Any] = {}
    async with open_reads(location) as reads:
        states = await reads.projection_states()
        found["projections"] = (
            states.log_head,
            states.log_head_hash,
            [(p.name, p.version, p.position, p.errors) for p in states.projections],
        )
        for model in READ_MODELS:
            errors = await reads.fold_errors(model.name, 1000, None)
            found[f"fold_errors {model.name}"] = errors.model_dump()
        for environment in ENVIRONMENTS:
            connections = await reads.list_connections(environment, None, None, 10_000, None)
            events = await reads.audit_events(environment, None, None, 0, 10_000, None)
            found[f"connections {environment}"] = connections.model_dump()
            found[f"events {environment}"] = events.model_dump()
            accounts = {e.linked_account_id for e in events.events if e.linked_account_id}
            for account in sorted(accounts):
                key = f"{environment} {account}"
                banner = await reads.account_connections(environment, account)
                found[f"banner {key}"] = banner.model_dump()
                runs = await reads.account_runs(environment, account, None, None, 10_000, None)
                found[f"runs {key}"] = runs.model_dump()
                for run in runs.runs:
                    detail = await reads.workflow_run(environment, run.instance_id, 10_000, None)
                    assert detail is not None
                    found[f"run {environment} {run.instance_id}"] = detail.model_dump()
            for event in events.events:
                detail = await reads.audit_event(environment, event.seq)
                assert detail is not None
                found[f"event {environment} {event.seq}"] = detail.model_dump()
    return found


async def append_prefix(source: Location, destination: Location, rows: int) -> None:
    """The first `rows` rows copied through the port, as an interrupted copy leaves them."""
    reading = await open_maintenance(source, readonly=True)
    writing = await open_maintenance(destination, readonly=False, create=True)
    try:
        await writing.append_stored(await reading.stored_rows(0, rows))
    finally:
        await reading.close()
        await writing.close()


def head_lines(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines() if line.strip().startswith("head seq")]


# --- the round trip -------------------------------------------------------------------------


async def test_a_log_copied_sqlite_to_postgresql_and_back_keeps_every_row_hash_and_answer(
    tmp_path: Path, pg_url: PostgresUrl
) -> None:
    source = populated_log(tmp_path / "source.sqlite3")
    back = tmp_path / "back" / "projector.sqlite3"  # a folder that does not exist yet

    there = copy_cli(source, with_password(pg_url))
    again = copy_cli(pg_url, back)

    assert (there.returncode, again.returncode) == (0, 0), there.stderr + again.stderr
    rows = await stored(source)
    assert len(rows) == len(sample_deliveries()) + 1
    assert await stored(pg_url) == rows
    assert await stored(back) == rows
    source_head = await head(source)
    assert await head(pg_url) == source_head == await head(back)
    for printed in (there.stdout, again.stdout):
        expected = f"head seq {source_head[0]}, hash {source_head[1]}"
        assert head_lines(printed) == [expected, expected]
        assert "rows/s" in printed
    for location in (source, pg_url, back):
        verified = verify_cli(location)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "log intact" in verified.stdout
    answers = await api_answers(source)
    assert answers["projections"][0] == len(rows)
    assert any(key.startswith("run ") for key in answers)
    assert await api_answers(pg_url) == answers
    assert await api_answers(back) == answers


async def test_the_copy_is_not_shown_as_progress_and_never_shows_the_password(
    tmp_path: Path, pg_url: PostgresUrl
) -> None:
    result = copy_cli(populated_log(tmp_path / "source.sqlite3"), with_password(pg_url))
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    assert "postgres:***@" in result.stdout
    assert "\r" not in result.stderr  # not a terminal: no progress line
    assert "/ 538 rows" not in result.stderr


# --- resuming -------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_a_copy_interrupted_after_its_first_rows_resumes_after_them(
    tmp_path: Path, pg_url: PostgresUrl, engine: str
) -> None:
    source = populated_log(tmp_path / "source.sqlite3")
    destination: Location = pg_url if engine == "postgresql" else tmp_path / "copy.sqlite3"
    await append_prefix(source, destination, 200)
    assert (await head(destination))[0] == 200

    out = io.StringIO()
    assert await run_copy(source, destination, out) == 0

    assert f"copying seq 201..{len(sample_deliveries()) + 1}" in out.getvalue()
    assert await stored(destination) == await stored(source)
    assert await api_answers(destination) == await api_answers(source)


async def test_a_copy_run_again_copies_nothing_and_changes_nothing(tmp_path: Path) -> None:
    source = populated_log(tmp_path / "source.sqlite3")
    destination = tmp_path / "copy.sqlite3"
    assert await run_copy(source, destination, io.StringIO()) == 0
    rows = await stored(destination)

    out = io.StringIO()
    assert await run_copy(source, destination, out) == 0

    assert out.getvalue().startswith("nothing to copy: the destination holds the source's seq 1..")
    assert await stored(destination) == rows


class GrowingSource:
    """A source whose service stores one more delivery each time a chunk was read from it."""

    def __init__(self, maintenance: Maintenance, writer: sqlite3.Connection) -> None:
        self._maintenance = maintenance
        self._writer = writer

    async def head(self) -> tuple[int, str]:
        return await self._maintenance.head()

    async def stored_rows(self, after: int, limit: int) -> list[StoredRow]:
        rows = await self._maintenance.stored_rows(after, limit)
        log.append_batch(self._writer, [new_delivery(f'{{"n":{after}}}'.encode(), "live")])
        return rows


async def test_a_copy_takes_the_rows_the_source_held_at_its_start_and_a_rerun_the_rest(
    tmp_path: Path,
) -> None:
    path = populated_log(tmp_path / "source.sqlite3")
    start = await head(path)
    writer = open_log(path)
    source = await open_maintenance(path, readonly=True)
    destination = await open_maintenance(tmp_path / "copy.sqlite3", readonly=False, create=True)
    try:
        result = await copy_log(
            GrowingSource(source, writer),  # type: ignore[arg-type]
            destination,
            io.StringIO(),
            chunk=100,
        )
        copied_head = await destination.head()
    finally:
        await source.close()
        await destination.close()
        writer.close()
    assert (result.after, result.last) == (0, start[0])
    assert copied_head == start
    grown = await head(path)
    assert grown[0] > start[0]

    out = io.StringIO()
    assert await run_copy(path, tmp_path / "copy.sqlite3", out) == 0
    assert f"copying seq {start[0] + 1}..{grown[0]}" in out.getvalue()
    assert await head(tmp_path / "copy.sqlite3") == grown


# --- refusals -------------------------------------------------------------------------------


def other_log(path: Path) -> Path:
    """A log of other deliveries: it shares no row with `populated_log`'s."""
    conn = open_log(path)
    log.append_batch(conn, [new_delivery(ODD_BODY, "test"), *sample_deliveries()[7:40]])
    conn.close()
    return path


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_a_destination_holding_another_log_is_refused_with_nothing_written(
    tmp_path: Path, pg_url: PostgresUrl, engine: str
) -> None:
    source = populated_log(tmp_path / "source.sqlite3")
    destination: Location = pg_url if engine == "postgresql" else tmp_path / "other.sqlite3"
    await append_prefix(other_log(tmp_path / "other-source.sqlite3"), destination, 1000)
    before = await stored(destination)

    result = copy_cli(source, destination)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "the two logs differ" in result.stderr
    assert "nothing was copied" in result.stderr
    assert await stored(destination) == before


async def test_a_destination_ahead_of_its_source_is_refused_saying_so(
    tmp_path: Path, pg_url: PostgresUrl
) -> None:
    source = populated_log(tmp_path / "source.sqlite3")
    await append_prefix(source, pg_url, 1000)
    shorter = tmp_path / "shorter.sqlite3"
    await append_prefix(source, shorter, 100)

    result = copy_cli(shorter, pg_url)

    assert result.returncode == 1
    assert "more than the source's 1..100" in result.stderr
    assert "first rows are the source's whole log" in result.stderr
    assert await stored(pg_url) == await stored(source)


def alter_body(path: Path, seq: int) -> None:
    """Change one stored body as someone editing the file would (guard triggers dropped)."""
    conn = sqlite3.connect(path)
    triggers = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'deliveries'"
    ).fetchall()
    for (trigger,) in triggers:
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("UPDATE deliveries SET body = ? WHERE seq = ?", (b'{"altered":true}', seq))
    conn.commit()
    conn.close()


async def test_a_source_altered_behind_the_guards_stops_the_copy_with_exit_1(
    tmp_path: Path, other_url: PostgresUrl
) -> None:
    source = populated_log(tmp_path / "source.sqlite3")
    alter_body(source, 300)

    result = copy_cli(source, other_url)

    assert result.returncode == 1
    assert "seq 300" in result.stderr
    assert "projector verify" in result.stderr
    assert (await head(other_url))[0] == 0  # the chunk holding it is refused whole


@pytest.mark.parametrize(
    ("source", "destination", "named"),
    [
        ("mysql://db.example.com/projector", "{tmp}/copy.sqlite3", "SOURCE: mysql://"),
        ("{source}", "postgresql://u:pw@127.0.0.1", "DEST (postgresql://u:***@127.0.0.1)"),
        (
            "{source}",
            "postgresql://u:pw@127.0.0.1/db?sslmod=require",
            "DEST (postgresql://u:***@127.0.0.1/db?sslmod=require): unknown",
        ),
        ("{tmp}/missing.sqlite3", "{tmp}/copy.sqlite3", "SOURCE ("),
        ("{source}", "{source}", "SOURCE and DEST are the same database"),
        ("{source}", "{tmp}/source.sqlite3-folder", "DEST ("),
        (
            "{source}",
            "postgresql://u:pw@127.0.0.1:1/db",
            "DEST (postgresql://u:***@127.0.0.1:1/db)",
        ),
    ],
)
def test_a_bad_source_or_destination_exits_2_naming_it_and_copies_nothing(
    tmp_path: Path, source: str, destination: str, named: str
) -> None:
    populated_log(tmp_path / "source.sqlite3")
    (tmp_path / "source.sqlite3-folder").mkdir()
    ends = [
        end.format(tmp=tmp_path, source=tmp_path / "source.sqlite3")
        for end in (source, destination)
    ]

    result = copy_cli(*ends)

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"projector: configuration error: {named}")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "pw@" not in result.stderr
    assert not (tmp_path / "copy.sqlite3").exists()


async def test_a_postgresql_source_is_opened_read_only(pg_url: PostgresUrl, tmp_path: Path) -> None:
    await append_prefix(populated_log(tmp_path / "source.sqlite3"), pg_url, 50)
    source = await open_maintenance(pg_url, readonly=True)
    try:
        with pytest.raises(Exception, match="read-only transaction"):
            await source.append_stored(await source.stored_rows(0, 1))
    finally:
        await source.close()
    assert await query(pg_url, "SELECT count(*) FROM deliveries") == [(50,)]

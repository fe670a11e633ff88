"""Rebuild: the sorted replay into fresh tables, its swap, and rebuilds beside a live writer."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from projector import integrity
from projector.readmodels import CONNECTION_HEALTH, WORKFLOW_RUNS
from projector.storage.sqlite import log, projection, replay
from tests.storage_support import (
    BROKEN_BODY,
    NAMES,
    SLIPPED_ACCOUNT,
    SLIPPED_BODY,
    append_all,
    before_first_begin,
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
from tests.support import run_cli, service_env


def test_a_rebuild_with_a_failing_fold_records_its_errors_too(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Errors met during a rebuild are counted for the generation the rebuild swaps in."""
    conn = open_projected(db_path)
    log.append_batch(conn, [*sample_deliveries()[:30], delivery_of(BROKEN_BODY)])
    broken = replace(CONNECTION_HEALTH, fold=fail_on_broken_slug)
    monkeypatch.setattr(replay, "READ_MODELS", (broken, WORKFLOW_RUNS))
    assert replay.rebuild(conn, chunk=8) == 31
    errors = {s.name: s.errors for s in projection.statuses(conn)}
    assert errors == {"connection_health": 1, "workflow_runs": 0}


def test_rebuild_on_another_connection_then_more_appends_catch_up_to_a_fresh_rebuild(
    db_path: Path, tmp_path: Path
) -> None:
    """A rebuild by a second process, then more appends, still ends at the rebuilt state."""
    deliveries = sample_deliveries()
    writer = open_projected(db_path)
    log.append_batch(writer, deliveries[:300])
    catch_up(writer, 100)
    rebuilder = log.connect(db_path)
    assert replay.rebuild(rebuilder, chunk=64) == 300
    append_all(writer, deliveries[300:])
    catch_up(writer, 50)
    assert positions(writer) == dict.fromkeys(NAMES, len(deliveries))
    assert read_models(writer) == rebuilt(tmp_path / "fresh.sqlite3", deliveries)
    assert read_models(rebuilder) == read_models(writer)


def test_appends_between_rebuild_chunks_are_folded_before_the_swap(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deliveries appended while a rebuild runs end up in the swapped-in tables."""
    deliveries = sample_deliveries()
    writer = open_projected(db_path)
    log.append_batch(writer, deliveries[:200])
    catch_up(writer)
    later = iter([deliveries[200:300], deliveries[300:]])

    class AppendOnProgress:
        """Stands in for the projection logger: each progress line, the writer appends more."""

        def info(self, event: str, **_: Any) -> None:
            if event == "rebuild_progress" and (batch := next(later, None)) is not None:
                log.append_batch(writer, batch)

        def error(self, event: str, **_: Any) -> None:
            pass

    monkeypatch.setattr(replay, "logger", AppendOnProgress())
    rebuilder = log.connect(db_path)
    assert replay.rebuild(rebuilder, chunk=64) == len(deliveries)
    assert next(later, None) is None
    assert positions(writer) == dict.fromkeys(NAMES, len(deliveries))
    assert projection.catch_up_batch(writer) == 0
    assert read_models(writer) == rebuilt(tmp_path / "fresh.sqlite3", deliveries)


def test_a_rebuild_that_another_rebuild_overtakes_still_completes(
    db_path: Path, tmp_path: Path
) -> None:
    """Two rebuilds at once (CLI and start-up): the later one to start its swap still succeeds."""
    deliveries = sample_deliveries()[:80]
    first = open_projected(db_path)
    log.append_batch(first, deliveries)
    second = log.connect(db_path)
    # The second rebuild runs after `first` chose its generation, before its first transaction.
    overtaken = before_first_begin(first, lambda: replay.rebuild(second))
    assert replay.rebuild(first, chunk=16) == len(deliveries)
    first.set_trace_callback(None)
    assert overtaken == [len(deliveries)]
    assert positions(first) == dict.fromkeys(NAMES, len(deliveries))
    assert read_models(first) == rebuilt(tmp_path / "fresh.sqlite3", deliveries)


def test_rebuild_of_an_empty_log_leaves_empty_tables_at_position_zero(db_path: Path) -> None:
    """Rebuild returns the head it reached, 0 for an empty log."""
    conn = open_log(db_path)
    assert replay.rebuild(conn) == 0
    assert read_models(conn) == {"connections": [], "workflow_runs": []}
    assert positions(conn) == dict.fromkeys(NAMES, 0)


def test_a_rebuild_leaves_no_rebuild_tables_behind(db_path: Path) -> None:
    """After the swap only the live read-model tables remain."""
    conn = open_projected(db_path)
    log.append_batch(conn, sample_deliveries()[:50])
    replay.rebuild(conn, chunk=10)
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert not {t for t in tables if t.endswith(replay.REBUILD_SUFFIX)}
    assert {"connections", "workflow_runs", "projections", "projection_errors"} <= tables


def test_a_rebuild_folds_rows_whose_stored_kind_or_key_differs_from_what_the_body_says(
    tmp_path: Path,
) -> None:
    """The sorted rebuild groups by the log's columns; rows an older release filed differently
    are still folded, as the body says, into the same tables."""
    deliveries = sample_deliveries()
    connection = next(i for i, d in enumerate(deliveries) if d.kind == "connection" and d.change)
    workflow = next(i for i, d in enumerate(deliveries) if d.kind == "workflow" and d.change)
    misfiled = list(deliveries)
    misfiled[connection] = replace(deliveries[connection], kind=None, slug=None)
    misfiled[workflow] = replace(deliveries[workflow], kind="connection", instance_id="other")
    later = next(i for i in range(workflow + 1, len(deliveries)) if deliveries[i].kind)
    misfiled[later] = replace(deliveries[later], linked_account_id="someone_else")
    expected = rebuilt(tmp_path / "true.sqlite3", deliveries)
    assert rebuilt(tmp_path / "misfiled.sqlite3", misfiled) == expected


def test_a_rebuild_with_a_read_model_in_another_process_gives_the_same_tables(
    db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large logs rebuild their second read model in a spawned process; the tables match."""
    deliveries = [*sample_deliveries(), delivery_of(BROKEN_BODY)]
    serial = rebuilt(tmp_path / "serial.sqlite3", deliveries)
    conn = open_projected(db_path)
    log.append_batch(conn, deliveries)
    monkeypatch.setattr(replay, "PARALLEL_FROM", 0)
    spawned: list[object] = []
    real_executor = replay.ProcessPoolExecutor

    def counting_executor(*args: Any, **kwargs: Any) -> Any:
        spawned.append(kwargs.get("mp_context"))
        return real_executor(*args, **kwargs)

    monkeypatch.setattr(replay, "ProcessPoolExecutor", counting_executor)
    assert replay.rebuild(conn, chunk=50) == len(deliveries)
    assert len(spawned) == 1
    assert read_models(conn) == serial
    assert positions(conn) == dict.fromkeys(NAMES, len(deliveries))


def test_a_rebuild_folds_a_valid_event_an_older_release_logged_as_a_flagged_ones_duplicate(
    db_path: Path,
) -> None:
    """Older releases gave a flagged copy the valid event's identity; a rebuild repairs that."""
    expired = BROKEN_BODY.replace(b"Connection Created", b"Connection Expired")
    valid = new_delivery(expired, "live")
    copy = new_delivery(expired.replace(b'"environment":"live"', b'"environment":"test"'), "live")
    assert copy.flags == ("environment_mismatch",)
    conn = open_projected(db_path)
    # The row such a release wrote: the flagged copy under the valid event's key, first.
    appended = log.append_batch(conn, [replace(copy, event_key=valid.event_key), valid])
    assert [a.duplicate_of for a in appended] == [None, 1]
    replay.rebuild(conn)
    assert conn.execute("SELECT status FROM connections").fetchall() == [("expired",)]


@pytest.mark.parametrize("seq", [0, -4])
@pytest.mark.parametrize("kind", ["connection", None], ids=["sorted_read", "stray"])
def test_a_rebuild_never_folds_a_row_slipped_in_below_seq_1(
    db_path: Path, tmp_path: Path, seq: int, kind: str | None
) -> None:
    """Rebuild folds seq 1..head, the rows verify walks; a row below it changes nothing.

    Filed under its kind it would reach the sorted read; filed under none, the strays.
    """
    deliveries = sample_deliveries()[:60]
    log.append_batch(open_log(db_path), deliveries)
    without_seq_check(db_path)
    conn = log.connect(db_path)
    slip_in(conn, seq, replace(delivery_of(SLIPPED_BODY), kind=kind))
    assert replay.rebuild(conn, chunk=16) == 60
    tables = read_models(conn)
    assert SLIPPED_ACCOUNT not in {row[1] for row in tables["connections"]}
    assert tables == rebuilt(tmp_path / "fresh.sqlite3", deliveries)


def test_a_rebuild_refuses_a_log_with_a_gap_and_keeps_the_tables_it_had(db_path: Path) -> None:
    """Past a gap verify proves nothing, so a row slipped in beyond the head is never folded."""
    conn = open_projected(db_path)
    log.append_batch(conn, sample_deliveries()[:20])
    catch_up(conn)
    before = read_models(conn)
    slip_in(conn, 25, delivery_of(SLIPPED_BODY))
    with pytest.raises(
        integrity.LogNotIntact, match=re.escape("no row with seq 21 (the next row has seq 25)")
    ):
        replay.rebuild(conn)
    assert read_models(conn) == before
    assert positions(conn) == dict.fromkeys(NAMES, 20)


def test_projector_rebuild_on_a_log_with_a_gap_exits_1_naming_the_missing_seq(
    db_path: Path,
) -> None:
    conn = open_projected(db_path)
    log.append_batch(conn, sample_deliveries()[:20])
    slip_in(conn, 25, delivery_of(SLIPPED_BODY))
    conn.close()
    done = run_cli("rebuild", env=service_env(db_path))
    assert done.returncode == 1, done.stderr
    assert "no row with seq 21 (the next row has seq 25)" in done.stderr
    assert "Traceback" not in done.stderr

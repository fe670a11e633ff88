"""Rebuild: replay the whole log into fresh read-model tables, then swap them in at once."""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import structlog

from projector.events import format_instant, parse_change
from projector.readmodels import READ_MODELS, FoldError, ReadModel, read_changes
from projector.storage.port import RebuildSuperseded
from projector.storage.rows import LoggedDelivery
from projector.storage.sqlite import chain, log, tables
from projector.storage.sqlite.log import insert_many
from projector.storage.sqlite.projection import fold_changes, prepare, record_errors

logger = structlog.get_logger("projector.replay")

REBUILD_SUFFIX = "__rebuild"


# Read-model rows per rebuild transaction: each holds the write lock for a few
# milliseconds, so a running server's appends barely wait.
REBUILD_CHUNK = 2000
# From this many deliveries on, each read model after the first is rebuilt in a process of
# its own, in parallel; below it, starting the process costs more than it saves.
PARALLEL_FROM = 100_000


def rebuild(
    conn: sqlite3.Connection,
    chunk: int = REBUILD_CHUNK,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> int:
    """Replay the whole log into fresh tables and swap them in atomically; returns the head.

    Each read model reads its rows of the log sorted by key, so a key's events arrive
    together: its state is folded in memory, written once, and memory holds one key.
    """
    prepare(conn)
    with log.transaction(conn):
        # The generation is claimed under the write lock, so two rebuilds never share one;
        # the newer claim wins and the older rebuild stops at its next chunk.
        generation = int(
            conn.execute(
                "SELECT max((SELECT coalesce(max(generation), 0) FROM projections),"
                " (SELECT coalesce(max(generation), 0) FROM rebuild_claims)) + 1"
            ).fetchone()[0]
        )
        conn.execute("INSERT INTO rebuild_claims (generation) VALUES (?)", (generation,))
        # Leftovers of a rebuild that died or was superseded are dropped first.
        conn.execute("DELETE FROM projection_errors WHERE generation >= ?", (generation,))
        for model in READ_MODELS:
            conn.execute(f"DROP TABLE IF EXISTS {model.table}{REBUILD_SUFFIX}")
            tables.create_table(conn, model, model.table + REBUILD_SUFFIX)
        position = log.head(conn)
        # Rows 1..position, no more (the sorted reads bound seq) and no fewer: past a gap
        # `projector verify` proves nothing, so a log with one is not folded at all.
        chain.check_without_gaps(conn, position)
    # The sorted reads run on a second connection: its snapshot stays put while this one
    # commits the new rows in short transactions, which a server's appends slot between.
    reader = log.connect(log.path_of(conn), readonly=True)
    try:
        # The new tables hold nothing that is not in the log: a crash means rebuilding again.
        with log.relaxed_sync(conn):
            _fill(conn, reader, position, generation, chunk)
    finally:
        reader.close()
    with log.transaction(conn):
        _check_claim(conn, generation)
        # Deliveries appended since the sorted reads began; then the swap, in one transaction.
        while deliveries := log.read_after(conn, position, chunk):
            _rebuild_chunk(conn, deliveries, generation)
            position = deliveries[-1].seq
        for model in READ_MODELS:
            conn.execute(f"DROP TABLE IF EXISTS {model.table}")
            conn.execute(f"ALTER TABLE {model.table}{REBUILD_SUFFIX} RENAME TO {model.table}")
            conn.execute(
                "INSERT OR REPLACE INTO projections (name, version, position, generation)"
                " VALUES (?, ?, ?, ?)",
                (model.name, model.version, position, generation),
            )
        conn.execute("DELETE FROM projection_errors WHERE generation < ?", (generation,))
        conn.execute("DELETE FROM rebuild_claims")
        # When each generation was swapped in: operators ask when the last rebuild ran.
        conn.execute(
            "INSERT OR REPLACE INTO rebuilds (generation, finished_at) VALUES (?, ?)",
            (generation, format_instant(clock())),
        )
    logger.info("rebuild_done", position=position, generation=generation)
    return position


def _fill(
    conn: sqlite3.Connection, reader: sqlite3.Connection, head: int, generation: int, chunk: int
) -> None:
    """Fold the log up to `head` into the rebuild tables, then index them."""
    first, *others = READ_MODELS
    strays: list[int] = []
    errors: dict[str, list[FoldError]] = {}
    if head >= PARALLEL_FROM and others:
        # The folds are CPU-bound Python, and the GIL keeps threads to one core.
        spawn = multiprocessing.get_context("spawn")  # no fork of a threaded server
        with ProcessPoolExecutor(len(others), mp_context=spawn) as pool:
            apart = [
                pool.submit(_fill_apart, log.path_of(conn), m.name, head, generation, chunk)
                for m in others
            ]
            strays, errors[first.name] = _fill_model(conn, reader, first, head, generation, chunk)
            for model, future in zip(others, apart, strict=True):
                their_strays, errors[model.name] = future.result()
                strays += their_strays
    else:
        for model in READ_MODELS:
            their_strays, errors[model.name] = _fill_model(
                conn, reader, model, head, generation, chunk
            )
            strays += their_strays
    with log.transaction(conn):
        _check_claim(conn, generation)
        for name, found in errors.items():
            record_errors(conn, name, generation, found)
    # Rows the sorted reads could not place: folded by seq, merged with what is stored.
    strays.extend(_seqs_of_no_model(reader, head))
    strays.sort()
    for start in range(0, len(strays), chunk):
        with log.transaction(conn):
            _check_claim(conn, generation)
            _rebuild_chunk(conn, log.read_seqs(conn, strays[start : start + chunk]), generation)
    # Indexes built once over the finished tables: a sort, far cheaper than keeping them up
    # to date through every chunk's writes.
    with log.transaction(conn):
        _check_claim(conn, generation)
        for model in READ_MODELS:
            tables.create_indexes(conn, model, model.table + REBUILD_SUFFIX, generation)


def _fill_model(
    conn: sqlite3.Connection,
    reader: sqlite3.Connection,
    model: ReadModel[Any, Any],
    head: int,
    generation: int,
    chunk: int,
) -> tuple[list[int], list[FoldError]]:
    """Fill one model's rebuild table; returns the seqs it could not place, and fold errors."""
    strays: list[int] = []
    errors: list[FoldError] = []
    insert = f"INSERT INTO {model.table}{REBUILD_SUFFIX} ({', '.join(model.columns)})"
    states = _states_in_key_order(reader, model, head, strays, errors)
    while batch := list(islice(states, chunk)):
        with log.transaction(conn):
            _check_claim(conn, generation)
            insert_many(conn, insert, [model.to_row(state) for state in batch])
        logger.info("rebuild_progress", projection=model.name, rows=len(batch))
    return strays, errors


def _fill_apart(
    path: Path, name: str, head: int, generation: int, chunk: int
) -> tuple[list[int], list[FoldError]]:
    """`_fill_model` in a process of its own, on its own connections."""
    # Silent: its progress would interleave with the parent's lines; its errors go back.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    model = next(model for model in READ_MODELS if model.name == name)
    conn = log.connect(path)
    reader = log.connect(path, readonly=True)
    try:
        with log.relaxed_sync(conn):
            return _fill_model(conn, reader, model, head, generation, chunk)
    finally:
        reader.close()
        conn.close()


def _states_in_key_order(
    reader: sqlite3.Connection,
    model: ReadModel[Any, Any],
    head: int,
    strays: list[int],
    errors: list[FoldError],
) -> Iterator[Any]:
    """Each key's state, folded from the log's rows of the model's kind sorted by key.

    The sort uses the key columns the log stored; a row whose change the current code
    reads under another key or model (or cannot read) goes to `strays` instead.
    """
    columns = ", ".join(model.key_columns)
    rows = reader.execute(
        f"SELECT seq, environment, body, {columns} FROM deliveries"
        # 1..head, the rows `projector verify` walks: a row slipped in below 1 is never folded.
        " WHERE kind = ? AND seq BETWEEN 1 AND ?"
        # `+`: a scan and one sort, rather than an index walk with a random read per row.
        f" ORDER BY +{columns}",
        (model.kind, head),
    )
    current: tuple[Any, ...] | None = None
    state = None
    for seq, environment, body, *stored in rows:
        try:
            change = parse_change(body, environment)
        except Exception:  # parse_change should never raise; the stray path records it
            strays.append(seq)
            continue
        if change is None:
            continue  # flagged: skipped, as the live projector skips it
        key = model.key_of(change) if isinstance(change, model.change_type) else None
        if key != tuple(stored):
            strays.append(seq)
            continue
        if key != current:
            if state is not None:
                yield state
            current, state = key, None
        try:
            state = model.fold(state, change)
        except Exception as exc:  # a fold bug must not stop the rebuild (invariant 5)
            errors.append(FoldError(seq, f"{type(exc).__name__}: {exc}"))
    if state is not None:
        yield state


def _seqs_of_no_model(reader: sqlite3.Connection, head: int) -> list[int]:
    """Rows no read model's sorted read covers; the current code may still fold them."""
    kinds = [model.kind for model in READ_MODELS]
    rows = reader.execute(
        "SELECT seq FROM deliveries WHERE seq BETWEEN 1 AND ?"
        f" AND (kind IS NULL OR kind NOT IN ({', '.join('?' * len(kinds))}))",
        (head, *kinds),
    )
    return [seq for (seq,) in rows]


def _check_claim(conn: sqlite3.Connection, generation: int) -> None:
    newest = conn.execute("SELECT max(generation) FROM rebuild_claims").fetchone()[0]
    if newest != generation:
        raise RebuildSuperseded(
            f"rebuild {generation} stops: rebuild {newest} started after it and carries on"
        )


def _rebuild_chunk(
    conn: sqlite3.Connection, deliveries: Sequence[LoggedDelivery], generation: int
) -> None:
    read = read_changes(deliveries)
    for model in READ_MODELS:
        errors = fold_changes(conn, model, model.table + REBUILD_SUFFIX, read)
        record_errors(conn, model.name, generation, errors)

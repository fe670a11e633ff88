"""The read-model tables in SQLite: create them, load fold states, save what changed."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Hashable, Sequence
from typing import Any

from projector.readmodels import FoldError, ReadModel
from projector.storage.sqlite.log import insert_many


def create_table(conn: sqlite3.Connection, model: ReadModel[Any, Any], table: str) -> None:
    """Create `model`'s table as `table`, without its secondary indexes."""
    columns = ", ".join(f"{c} TEXT" for c in model.columns)
    key = ", ".join(model.key_columns)
    conn.execute(f"CREATE TABLE {table} ({columns}, PRIMARY KEY ({key})) WITHOUT ROWID")


def create_indexes(
    conn: sqlite3.Connection, model: ReadModel[Any, Any], table: str, generation: int
) -> None:
    """The query indexes of `table`, named for the generation (names outlive a rename)."""
    for suffix, index_columns in model.indexes:
        conn.execute(
            f"CREATE INDEX {model.table}_{suffix}_g{generation} ON {table} ({index_columns})"
        )


def apply(
    conn: sqlite3.Connection,
    model: ReadModel[Any, Any],
    table: str,
    changes: Sequence[tuple[int, Any]],
) -> list[FoldError]:
    """Fold `changes` (seq, change) into `table`; returns the events the fold raised on."""
    states = load_states(conn, model, table, model.keys_of(changes))
    dirty, errors = model.fold_into(states, changes)
    if dirty:
        insert = f"INSERT OR REPLACE INTO {table} ({', '.join(model.columns)})"
        insert_many(conn, insert, [model.to_row(state) for state in dirty.values()])
    return errors


def load_states(
    conn: sqlite3.Connection, model: ReadModel[Any, Any], table: str, keys: set[tuple[str, ...]]
) -> dict[Hashable, Any]:
    """The stored states of `keys`, read in one step per 1,000 keys."""
    width = len(model.key_columns)
    positions = [model.columns.index(c) for c in model.key_columns]
    on = " AND ".join(f"t.{c} = k.column{i}" for i, c in enumerate(model.key_columns, 1))
    # A join, not `(a, b) IN (VALUES ...)`, which SQLite answers with a table scan; and
    # one JSON array for all rows, because each row fetched is a step that gives up the
    # GIL (see log.insert_many). Every read-model column is TEXT, so JSON carries it as is.
    found = f"json_group_array(json_array({', '.join('t.' + c for c in model.columns)}))"
    states: dict[Hashable, Any] = {}
    ordered = list(keys)
    for start in range(0, len(ordered), 1000):
        part = ordered[start : start + 1000]
        values = ", ".join(["(" + ", ".join("?" * width) + ")"] * len(part))
        (rows,) = conn.execute(
            f"SELECT {found} FROM (VALUES {values}) AS k CROSS JOIN {table} AS t ON {on}",
            [value for key in part for value in key],
        ).fetchone()
        for row in json.loads(rows):
            states[tuple(row[i] for i in positions)] = model.from_row(tuple(row))
    return states

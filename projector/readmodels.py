"""Read-model tables: their schema, and loading and saving fold states in them."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from projector.events import ConnectionChange, WorkflowOutcome, format_instant, parse_instant
from projector.fold import ConnectionHealth, WorkflowRun, fold_connection, fold_workflow_run
from projector.log import insert_many

Change = TypeVar("Change", ConnectionChange, WorkflowOutcome)
State = TypeVar("State", ConnectionHealth, WorkflowRun)


@dataclass(frozen=True)
class FoldError:
    """An event a fold raised on: recorded, skipped, and the projector goes on."""

    seq: int
    error: str


@dataclass(frozen=True)
class ReadModel(Generic[Change, State]):
    """One projection: a fold, and the table its states live in."""

    name: str
    # Bump when the fold or the table changes: start-up then rebuilds from the log.
    version: int
    table: str
    change_type: type[Change]
    # The log's `kind` for this model's events; its key columns are log columns too.
    kind: str
    columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    indexes: tuple[tuple[str, str], ...]
    fold: Callable[[State | None, Change], State]
    key_of: Callable[[Change], tuple[str, ...]]
    to_row: Callable[[State], tuple[Any, ...]]
    from_row: Callable[[tuple[Any, ...]], State]

    def create_table(self, conn: sqlite3.Connection, table: str) -> None:
        """Create this model's table as `table`, without its secondary indexes."""
        columns = ", ".join(f"{c} TEXT" for c in self.columns)
        key = ", ".join(self.key_columns)
        conn.execute(f"CREATE TABLE {table} ({columns}, PRIMARY KEY ({key})) WITHOUT ROWID")

    def create_indexes(self, conn: sqlite3.Connection, table: str, generation: int) -> None:
        """The query indexes of `table`, named for the generation (names outlive a rename)."""
        for suffix, index_columns in self.indexes:
            conn.execute(
                f"CREATE INDEX {self.table}_{suffix}_g{generation} ON {table} ({index_columns})"
            )

    def apply(
        self, conn: sqlite3.Connection, table: str, changes: Sequence[tuple[int, Change]]
    ) -> list[FoldError]:
        """Fold `changes` (seq, change) into `table`; returns the events the fold raised on."""
        states = self._load(conn, table, {self.key_of(c) for _, c in changes})
        dirty: dict[Hashable, State] = {}
        errors = []
        for seq, change in changes:
            key = self.key_of(change)
            try:
                dirty[key] = states[key] = self.fold(states.get(key), change)
            except Exception as exc:  # a fold bug must not stop the projector (invariant 5)
                errors.append(FoldError(seq, f"{type(exc).__name__}: {exc}"))
        if dirty:
            insert = f"INSERT OR REPLACE INTO {table} ({', '.join(self.columns)})"
            insert_many(conn, insert, [self.to_row(state) for state in dirty.values()])
        return errors

    def _load(
        self, conn: sqlite3.Connection, table: str, keys: set[tuple[str, ...]]
    ) -> dict[Hashable, State]:
        """The stored states of `keys`, read in one step per 1,000 keys."""
        width = len(self.key_columns)
        positions = [self.columns.index(c) for c in self.key_columns]
        on = " AND ".join(f"t.{c} = k.column{i}" for i, c in enumerate(self.key_columns, 1))
        # A join, not `(a, b) IN (VALUES ...)`, which SQLite answers with a table scan; and
        # one JSON array for all rows, because each row fetched is a step that gives up the
        # GIL (see log.insert_many). Every read-model column is TEXT, so JSON carries it as is.
        found = f"json_group_array(json_array({', '.join('t.' + c for c in self.columns)}))"
        states: dict[Hashable, State] = {}
        ordered = list(keys)
        for start in range(0, len(ordered), 1000):
            part = ordered[start : start + 1000]
            values = ", ".join(["(" + ", ".join("?" * width) + ")"] * len(part))
            (rows,) = conn.execute(
                f"SELECT {found} FROM (VALUES {values}) AS k CROSS JOIN {table} AS t ON {on}",
                [value for key in part for value in key],
            ).fetchone()
            for row in json.loads(rows):
                states[tuple(row[i] for i in positions)] = self.from_row(tuple(row))
        return states


def _connection_row(state: ConnectionHealth) -> tuple[Any, ...]:
    return (
        state.environment,
        state.linked_account_id,
        state.slug,
        state.status,
        format_instant(state.status_since),
        state.type,
        format_instant(state.first_seen),
        format_instant(state.last_seen),
    )


def _connection_state(row: tuple[Any, ...]) -> ConnectionHealth:
    environment, account, slug, status, since, type_, first, last = row
    return ConnectionHealth(
        environment,
        account,
        slug,
        status,
        parse_instant(since),
        type_,
        parse_instant(first),
        parse_instant(last),
    )


CONNECTION_HEALTH: ReadModel[ConnectionChange, ConnectionHealth] = ReadModel(
    name="connection_health",
    version=3,
    table="connections",
    change_type=ConnectionChange,
    kind="connection",
    columns=(
        "environment",
        "linked_account_id",
        "slug",
        "status",
        "status_since",
        "type",
        "first_seen",
        "last_seen",
    ),
    key_columns=("environment", "linked_account_id", "slug"),
    indexes=(
        ("by_status", "environment, status, linked_account_id, slug"),
        ("by_slug", "environment, slug, linked_account_id"),
    ),
    fold=fold_connection,
    key_of=lambda c: (c.environment, c.linked_account_id, c.slug),
    to_row=_connection_row,
    from_row=_connection_state,
)


def _run_row(state: WorkflowRun) -> tuple[Any, ...]:
    return (
        state.environment,
        state.instance_id,
        state.linked_account_id,
        state.status,
        state.workflow_id,
        state.workflow_name,
        state.config_id,
    )


WORKFLOW_RUNS: ReadModel[WorkflowOutcome, WorkflowRun] = ReadModel(
    name="workflow_runs",
    version=3,
    table="workflow_runs",
    change_type=WorkflowOutcome,
    kind="workflow",
    columns=(
        "environment",
        "instance_id",
        "linked_account_id",
        "status",
        "workflow_id",
        "workflow_name",
        "config_id",
    ),
    key_columns=("environment", "instance_id"),
    indexes=(("by_account", "environment, linked_account_id, instance_id"),),
    fold=fold_workflow_run,
    key_of=lambda o: (o.environment, o.instance_id),
    to_row=_run_row,
    from_row=lambda row: WorkflowRun(*row),
)

READ_MODELS: tuple[ReadModel[Any, Any], ...] = (CONNECTION_HEALTH, WORKFLOW_RUNS)

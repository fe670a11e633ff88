"""Read-model tables: their schema, and loading and saving fold states in them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from projector.events import ConnectionChange, WorkflowOutcome, format_instant, parse_instant
from projector.fold import ConnectionHealth, WorkflowRun, fold_connection, fold_workflow_run

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
    columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    indexes: tuple[tuple[str, str], ...]
    fold: Callable[[State | None, Change], State]
    key_of: Callable[[Change], tuple[str, ...]]
    to_row: Callable[[State], tuple[Any, ...]]
    from_row: Callable[[tuple[Any, ...]], State]

    def create_table(self, conn: sqlite3.Connection, table: str, generation: int) -> None:
        """Create this model's table (and indexes named for the generation) as `table`."""
        columns = ", ".join(f"{c} TEXT" for c in self.columns)
        key = ", ".join(self.key_columns)
        conn.execute(f"CREATE TABLE {table} ({columns}, PRIMARY KEY ({key})) WITHOUT ROWID")
        # Index names outlive a rename, so each generation names its own.
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
            placeholders = ", ".join("?" for _ in self.columns)
            conn.executemany(
                f"INSERT OR REPLACE INTO {table} ({', '.join(self.columns)})"
                f" VALUES ({placeholders})",
                [self.to_row(state) for state in dirty.values()],
            )
        return errors

    def _load(
        self, conn: sqlite3.Connection, table: str, keys: set[tuple[str, ...]]
    ) -> dict[Hashable, State]:
        where = " AND ".join(f"{c} = ?" for c in self.key_columns)
        select = f"SELECT {', '.join(self.columns)} FROM {table} WHERE {where}"
        states: dict[Hashable, State] = {}
        for key in keys:
            row = conn.execute(select, key).fetchone()
            if row is not None:
                states[key] = self.from_row(row)
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
    version=2,
    table="connections",
    change_type=ConnectionChange,
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
    version=2,
    table="workflow_runs",
    change_type=WorkflowOutcome,
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

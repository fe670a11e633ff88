"""The read models: each one's fold, key and columns, and the pure step that folds changes."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from projector.events import (
    ConnectionChange,
    WorkflowOutcome,
    format_instant,
    parse_change,
    parse_instant,
)
from projector.fold import ConnectionHealth, WorkflowRun, fold_connection, fold_workflow_run
from projector.storage.rows import LoggedDelivery

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

    def fold_into(
        self, states: dict[Hashable, State], changes: Sequence[tuple[int, Change]]
    ) -> tuple[dict[Hashable, State], list[FoldError]]:
        """Fold `changes` (seq, change) onto `states` (updated in place, by key).

        Returns the states that changed, to be written, and the events the fold raised on.
        """
        dirty: dict[Hashable, State] = {}
        errors = []
        for seq, change in changes:
            key = self.key_of(change)
            try:
                dirty[key] = states[key] = self.fold(states.get(key), change)
            except Exception as exc:  # a fold bug must not stop the projector (invariant 5)
                errors.append(FoldError(seq, f"{type(exc).__name__}: {exc}"))
        return dirty, errors

    def changes_past(
        self, read: tuple[Changes, list[FoldError]], after: int
    ) -> tuple[list[tuple[int, Change]], list[FoldError]]:
        """Of what was read, this model's changes past seq `after`, and the parse errors."""
        changes, parse_errors = read
        mine = [(s, c) for s, c in changes if s > after and isinstance(c, self.change_type)]
        return mine, [e for e in parse_errors if e.seq > after]

    def keys_of(self, changes: Sequence[tuple[int, Change]]) -> set[tuple[str, ...]]:
        """The keys whose stored states folding `changes` needs."""
        return {self.key_of(change) for _, change in changes}


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
    version=4,
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
    version=4,
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


Changes = list[tuple[int, ConnectionChange | WorkflowOutcome]]


def read_changes(deliveries: Sequence[LoggedDelivery]) -> tuple[Changes, list[FoldError]]:
    """Parse each delivery once, for every projection: its change, or why it has none."""
    changes: Changes = []
    errors = []
    for delivery in deliveries:
        # Duplicates are folded too. The folds are idempotent, so a true repeat changes
        # nothing; and a `duplicate_of` recorded by an older release (one that matched a
        # valid event to a flagged one) must not keep a valid event out of the read models.
        try:
            change = parse_change(delivery.body, delivery.environment)
        except Exception as exc:  # parse_change should never raise; if it does, go on
            errors.append(FoldError(delivery.seq, f"{type(exc).__name__}: {exc}"))
            continue
        if change is not None:
            changes.append((delivery.seq, change))
    return changes, errors

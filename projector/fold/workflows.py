"""Workflow run status per (environment, instance_id)."""

from __future__ import annotations

from dataclasses import dataclass

from projector.events import WorkflowOutcome

# Workflow events carry no timestamp and arrive in any order, so the status cannot follow
# arrival. COMPLETED is final (a retried node can complete an errored run); among the
# others, the outcome that most needs attention wins. Unknown statuses rank lowest.
STATUS_PRECEDENCE = {"COMPLETED": 4, "ERRORED": 3, "TIMED_OUT": 2, "STOPPED": 1}


@dataclass(frozen=True)
class WorkflowRun:
    """How one workflow run (instance) ended, as far as its events tell."""

    environment: str
    instance_id: str
    linked_account_id: str
    status: str
    workflow_id: str | None
    workflow_name: str | None
    config_id: str | None


def _rank(status: str) -> tuple[int, str]:
    return STATUS_PRECEDENCE.get(status, 0), status


def _present(current: str | None, incoming: str | None) -> str | None:
    """The larger of two optional values, so that the result ignores arrival order."""
    if current is None or incoming is None:
        return current if incoming is None else incoming
    return max(current, incoming)


def fold_workflow_run(state: WorkflowRun | None, outcome: WorkflowOutcome) -> WorkflowRun:
    """Apply one workflow event to the run it belongs to."""
    if state is None:
        return WorkflowRun(
            outcome.environment,
            outcome.instance_id,
            outcome.linked_account_id,
            outcome.status,
            outcome.workflow_id,
            outcome.workflow_name,
            outcome.config_id,
        )
    return WorkflowRun(
        state.environment,
        state.instance_id,
        max(state.linked_account_id, outcome.linked_account_id),
        max(state.status, outcome.status, key=_rank),
        _present(state.workflow_id, outcome.workflow_id),
        _present(state.workflow_name, outcome.workflow_name),
        _present(state.config_id, outcome.config_id),
    )

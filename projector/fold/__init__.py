"""Pure fold functions: (state, event) -> state, with no I/O, clock or globals.

Each fold is a join: commutative, associative and idempotent, so any arrival order of the
same events, with any duplicates, folds to the same state: no answer depends on arrival.
"""

from projector.fold.connections import ConnectionHealth, fold_connection
from projector.fold.workflows import WorkflowRun, fold_workflow_run

__all__ = ["ConnectionHealth", "WorkflowRun", "fold_connection", "fold_workflow_run"]

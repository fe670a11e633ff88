"""Connection health per (environment, linked_account_id, slug)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from projector.events import ConnectionChange

# Refold's `createdAt` has one-second resolution, so two different events can share it.
# Breaking that tie by arrival order would make the result depend on arrival order; a fixed
# precedence does not. The state that asks for attention wins: deleted, then expired.
STATUS_PRECEDENCE = {"connected": 0, "expired": 1, "deleted": 2}


@dataclass(frozen=True)
class ConnectionHealth:
    """The current state of one connection, decided by its latest event."""

    environment: str
    linked_account_id: str
    slug: str
    status: str
    status_since: datetime
    type: str | None
    first_seen: datetime
    last_seen: datetime

    @property
    def needs_reconnect(self) -> bool:
        """An expired connection asks the customer to re-authenticate."""
        return self.status == "expired"


def _order(status: str, since: datetime, type_: str | None) -> tuple[datetime, int, bool, str]:
    # `type` is compared last, and None apart from "", only so that ties have one winner.
    return since, STATUS_PRECEDENCE[status], type_ is not None, type_ or ""


def fold_connection(state: ConnectionHealth | None, change: ConnectionChange) -> ConnectionHealth:
    """Apply one connection event; an event older than the current state keeps the status."""
    if state is None:
        return ConnectionHealth(
            change.environment,
            change.linked_account_id,
            change.slug,
            change.status,
            change.occurred_at,
            change.type,
            change.occurred_at,
            change.occurred_at,
        )
    current = _order(state.status, state.status_since, state.type)
    incoming = _order(change.status, change.occurred_at, change.type)
    winner = state if current >= incoming else None
    return ConnectionHealth(
        state.environment,
        state.linked_account_id,
        state.slug,
        state.status if winner else change.status,
        state.status_since if winner else change.occurred_at,
        state.type if winner else change.type,
        min(state.first_seen, change.occurred_at),
        max(state.last_seen, change.occurred_at),
    )

"""The JSON answers of the HTTP API, as pydantic models (`schemas/` is generated from them)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ConnectionStatus = Literal["connected", "expired", "deleted"]


class Answer(BaseModel):
    """Base of every answer: fields are exactly those declared."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(Answer):
    code: str = Field(description="Stable, machine-readable, e.g. 'invalid_signature'.")
    message: str = Field(description="What was wrong and what to do about it.")


class ErrorAnswer(Answer):
    """Every 4xx/5xx body."""

    error: ErrorDetail


class DeliveryAccepted(Answer):
    """200 from the receiver: the delivery is durably in the log."""

    seq: int
    environment: str
    duplicate: bool = Field(description="True when it repeats an event already in the log.")
    flags: list[str] = Field(
        description="Why the delivery was stored but is skipped by the projectors, e.g. "
        "'missing_field:slug'; empty when it is clean."
    )


class AccountConnection(Answer):
    slug: str
    status: ConnectionStatus
    status_since: str = Field(description="createdAt of the event that decided the status.")
    type: str | None
    needs_reconnect: bool
    first_seen: str
    last_event_at: str


class AccountConnections(Answer):
    """The banner query: does this account need to reconnect an app?"""

    linked_account_id: str
    environment: str
    needs_reconnect: bool
    connections: list[AccountConnection]


class ConnectionSummary(Answer):
    linked_account_id: str
    slug: str
    status: ConnectionStatus
    status_since: str


class ConnectionList(Answer):
    connections: list[ConnectionSummary]
    next_cursor: str | None


class RunDelivery(Answer):
    seq: int
    event: str | None
    status: str | None
    duplicate: bool


class WorkflowRunSummary(Answer):
    instance_id: str
    workflow_id: str | None
    workflow_name: str | None
    config_id: str | None
    linked_account_id: str
    environment: str
    status: str = Field(description="Lower case: completed, errored, stopped, timed_out, ...")


class WorkflowRunAnswer(WorkflowRunSummary):
    deliveries: list[RunDelivery] = Field(
        description="A page of the verified deliveries for this run, duplicates included, in"
        " log order; next_cursor gives the next page."
    )
    next_cursor: str | None


class WorkflowRunList(Answer):
    runs: list[WorkflowRunSummary]
    next_cursor: str | None


class AuditEvent(Answer):
    seq: int
    received_at: str
    environment: str
    event: str | None
    linked_account_id: str | None
    duplicate: bool
    flags: list[str]
    payload: dict[str, Any] | None


class AuditEventDetail(AuditEvent):
    duplicate_of: int | None
    key_id: str = Field(description="Fingerprint of the key that verified it (not the key).")
    signed_as: Literal["raw", "compact"]
    headers: dict[str, str]
    body_base64: str = Field(description="The exact bytes as received.")


class AuditEventList(Answer):
    events: list[AuditEvent]
    next_cursor: str | None


class ProjectionState(Answer):
    name: str
    version: int
    position: int = Field(description="Last seq processed (folded or skipped).")
    errors: int = Field(description="Events the fold raised on in this generation.")
    generation: int = Field(
        description="How many times the projection was built from the log (each rebuild adds 1)."
    )


class AlertFailure(Answer):
    seq: int = Field(description="The delivery whose transition raised the alert.")
    kind: str
    error: str = Field(description="The last attempt's error, e.g. 'HTTP 500: ...'.")
    failed_at: str = Field(description="When it was given up on, ISO 8601 UTC.")


class AlertOutboxState(Answer):
    """The alert projector (PROJECTOR_ALERT_URL): its checkpoint and outbox."""

    position: int = Field(description="Last seq the alert projector derived alerts from.")
    pending: int = Field(description="Alerts waiting to be sent, or to be retried.")
    sent: int = Field(description="Alerts delivered (answered 2xx), one by one or summed up.")
    failed: int = Field(description="Alerts given up on after every retry failed.")
    last_failure: AlertFailure | None = Field(description="The latest alert given up on.")


class Projections(Answer):
    log_head: int
    log_head_hash: str = Field(
        description="SHA-256 chain hash of the head row; record it to check the log later."
    )
    projections: list[ProjectionState]
    alerts: AlertOutboxState | None = Field(
        description="Null until PROJECTOR_ALERT_URL is first set on this database."
    )


class MinuteDeliveries(Answer):
    minute: str = Field(description="The minute's start, UTC.")
    new: int
    duplicate: int
    flagged: int = Field(description="Stored but flagged (counted as flagged only).")
    refused: int = Field(description="Refused (401, 413, 415, 503, 400): never stored.")


class ProjectionLagAnswer(Answer):
    name: str
    lag_seconds: float = Field(
        description="Age of the oldest delivery not folded yet; 0 when caught up."
    )
    last_rebuild_at: str | None = Field(
        description="When the last rebuild (the current generation) was swapped in, ISO 8601 "
        "UTC; null for a database rebuilt only by a release without this record."
    )


class ProcessStats(Answer):
    """What this process counted, by minute, and how far each projection lags right now."""

    deliveries_per_minute: list[MinuteDeliveries] = Field(
        description="Oldest first; the last is the current, partial minute."
    )
    projections: list[ProjectionLagAnswer]


class FoldError(Answer):
    seq: int = Field(description="The delivery the fold raised on (see GET /v1/events/{seq}).")
    environment: str
    event: str | None = Field(description="The delivery's Refold event name.")
    error: str = Field(description="What the fold raised, e.g. 'KeyError: ...'.")


class FoldErrorList(Answer):
    """The dead letters of one projection: events its fold raised on, skipped, by seq."""

    projection: str
    errors: list[FoldError] = Field(description="Only the projection's current generation.")
    next_cursor: str | None


class Health(Answer):
    status: Literal["ok"]


class Ready(Answer):
    """200 from /readyz: the log takes writes and the projector keeps up."""

    status: Literal["ready"]


class NotReady(Answer):
    """503 from /readyz."""

    status: Literal["not_ready"]
    reasons: list[str] = Field(
        description="Why, in fixed phrases: the log does not accept writes, the log cannot be "
        "read, the projector is not running, a projection lags beyond "
        "PROJECTOR_READY_MAX_LAG_SECONDS."
    )


ANSWERS: tuple[type[Answer], ...] = (
    ErrorAnswer,
    DeliveryAccepted,
    AccountConnections,
    ConnectionList,
    WorkflowRunAnswer,
    WorkflowRunList,
    AuditEventList,
    AuditEventDetail,
    Projections,
    FoldErrorList,
    ProcessStats,
    Health,
    Ready,
    NotReady,
)

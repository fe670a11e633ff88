"""Refold event payloads, and how one delivery's bytes become a typed, flagged event."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from projector.config import normalise_environment
from projector.json_body import canonical, load_json_object

CONNECTION_STATUS_BY_EVENT = {
    "Connection Created": "connected",
    "Connection Expired": "expired",
    "Connection Deleted": "deleted",
}
WORKFLOW_STATUS_BY_EVENT = {
    "Workflow Completed": "COMPLETED",
    "Workflow Errored": "ERRORED",
    "Workflow Stopped": "STOPPED",
    "Workflow Timed Out": "TIMED_OUT",
}
Kind = Literal["connection", "workflow"]
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
# Refold's own shape, read directly: email.utils takes ~10x as long. Four-digit years from
# 1000 only, because email.utils reads years below 100 as 19xx or 20xx.
_REFOLD_DATE = re.compile(
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" ([1-9]\d{3}) (\d\d):(\d\d):(\d\d) GMT"
)


def parse_instant(value: str) -> datetime:
    """Parse Refold's RFC 1123 `createdAt` (or ISO 8601) into an aware UTC datetime."""
    refold = _REFOLD_DATE.fullmatch(value)
    if refold is not None:
        day, month, year, hour, minute, second = refold.groups()
        return datetime(
            int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
    if value.endswith("Z") and value[4:5] == "-":  # as format_instant writes them
        return datetime.fromisoformat(value).astimezone(UTC)
    text = value.strip()
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 shifted out of range: as invalid as any bad date
        raise ValueError(f"{value!r} is out of the representable range") from None


def format_instant(moment: datetime) -> str:
    """ISO 8601 in UTC with a `Z`: seconds, or microseconds when there are any."""
    spec = "microseconds" if moment.microsecond else "seconds"
    if moment.tzinfo is UTC:  # every instant parse_instant makes: skip the conversions
        return moment.isoformat(timespec=spec)[:-6] + "Z"
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec=spec) + "Z"


class ConnectionEventPayload(BaseModel):
    """`Connection Created` / `Expired` / `Deleted`; unknown fields are kept verbatim."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True, title="ConnectionEvent")

    linked_account_id: str = Field(min_length=1)
    org_id: str | None = None
    environment: str | None = None
    type: str | None = None
    event: str
    slug: str = Field(min_length=1)
    createdAt: str = Field(description="RFC 1123 date, e.g. 'Tue, 07 Nov 2023 08:38:33 GMT'")

    @field_validator("createdAt")
    @classmethod
    def _parseable(cls, value: str) -> str:
        parse_instant(value)
        return value


class WorkflowEventPayload(BaseModel):
    """`Workflow Completed` / `Errored` / `Stopped` / `Timed Out`; extra fields kept verbatim."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True, title="WorkflowEvent")

    linked_account_id: str = Field(min_length=1)
    instance_id: str = Field(min_length=1)
    workflow_id: str | None = None
    config_id: str | None = None
    event: str
    workflow_name: str | None = None
    status: str | None = None
    environment: str | None = None


@dataclass(frozen=True)
class ConnectionChange:
    """What one connection event says: this connection had `status` at `occurred_at`."""

    environment: str
    linked_account_id: str
    slug: str
    status: str
    occurred_at: datetime
    type: str | None


@dataclass(frozen=True)
class WorkflowOutcome:
    """What one workflow event says about a run."""

    environment: str
    instance_id: str
    linked_account_id: str
    status: str
    workflow_id: str | None
    workflow_name: str | None
    config_id: str | None


@dataclass(frozen=True)
class ParsedDelivery:
    """A verified delivery read as an event: identity, searchable fields and flags."""

    event: str | None
    kind: Kind | None
    linked_account_id: str | None
    slug: str | None
    instance_id: str | None
    event_key: str
    flags: tuple[str, ...]
    # What the projectors fold; None for a flagged delivery, which they skip.
    change: ConnectionChange | WorkflowOutcome | None


def _identity(*parts: Any) -> str:
    return hashlib.sha256(canonical(parts).encode()).hexdigest()


def _raw_identity(body: bytes, environment: str) -> str:
    return _identity("raw", environment, hashlib.sha256(body).hexdigest())


def parse_change(body: bytes, environment: str) -> ConnectionChange | WorkflowOutcome | None:
    """Just what the projectors fold: `parse_delivery(...).change`, without identity or flags.

    A rebuild calls this for every delivery in the log, so it builds nothing it drops.
    """
    payload, flag = load_json_object(body)
    if payload is None or flag is not None or _environment_flags(payload, environment):
        return None
    event = payload.get("event")
    if not isinstance(event, str):
        return None
    try:
        if event in CONNECTION_STATUS_BY_EVENT:
            return _connection_change(payload, environment, event)
        if event in WORKFLOW_STATUS_BY_EVENT:
            return _workflow_outcome(payload, environment, event)
    except ValidationError:  # flagged invalid_field or missing_field: the projectors skip it
        return None
    return None


def parse_delivery(body: bytes, environment: str) -> ParsedDelivery:
    """Read a verified body for `environment` (the key's); never raises on bad input."""
    payload, flag = load_json_object(body)
    if payload is None:
        key = _raw_identity(body, environment)
        return ParsedDelivery(None, None, None, None, None, key, (str(flag),), None)
    event = payload.get("event")
    event_name = event if isinstance(event, str) else None
    if flag is not None:
        # Searchable as Python reads it, but identified by its bytes: two bodies that differ
        # only in a repeated key's other value must not be taken for one event.
        return _flagged(
            payload, environment, event_name, None, [flag], _raw_identity(body, environment)
        )
    flags = _environment_flags(payload, environment)
    if event_name in CONNECTION_STATUS_BY_EVENT:
        return _connection(payload, environment, event_name, flags)
    if event_name in WORKFLOW_STATUS_BY_EVENT:
        return _workflow(payload, environment, event_name, flags)
    flags.append("missing_field:event" if event is None else "unknown_event")
    return _flagged(payload, environment, event_name, None, flags)


def _flagged(
    payload: dict[str, Any],
    environment: str,
    event: str | None,
    kind: Kind | None,
    flags: list[str],
    event_key: str | None = None,
) -> ParsedDelivery:
    """A delivery the projectors skip, with whatever searchable fields it does have.

    Identified by its canonical payload unless `event_key` is given; never by the identity
    of the valid event it resembles, so it can be the duplicate only of other flagged ones.
    """
    return ParsedDelivery(
        event,
        kind,
        _text(payload.get("linked_account_id")),
        _text(payload.get("slug")),
        _text(payload.get("instance_id")),
        event_key or _identity("other", environment, canonical(payload)),
        tuple(flags),
        None,
    )


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _environment_flags(payload: dict[str, Any], environment: str) -> list[str]:
    named = payload.get("environment")
    if named is None or named == environment:  # `environment` is canonical already
        return []
    if not isinstance(named, str) or normalise_environment(named) != environment:
        return ["environment_mismatch"]
    return []


def _field_flags(error: ValidationError) -> list[str]:
    flags = []
    for problem in error.errors():
        field = ".".join(str(p) for p in problem["loc"]) or "body"
        prefix = "missing_field" if problem["type"] == "missing" else "invalid_field"
        flags.append(f"{prefix}:{field}")
    return sorted(set(flags))


def _plain(payload: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...]) -> bool:
    """Whether every field has its documented type already, so validation would change none.

    The common case, checked in a few lookups; anything else goes through the pydantic model,
    which coerces numbers and names each bad field.
    """
    for name in required:
        value = payload.get(name)
        if not isinstance(value, str) or not value:
            return False
    for name in optional:  # a loop, not all(...): this runs for every delivery
        value = payload.get(name)
        if value is not None and not isinstance(value, str):
            return False
    return True


def _fields(model: type[BaseModel]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The model's required and optional fields but `event` (the caller has checked it)."""
    fields = {name: field for name, field in model.model_fields.items() if name != "event"}
    required = tuple(name for name, field in fields.items() if field.is_required())
    return required, tuple(name for name in fields if name not in required)


# Read from the models, so the fast check covers every field they would validate.
_CONNECTION_REQUIRED, _CONNECTION_OPTIONAL = _fields(ConnectionEventPayload)
_WORKFLOW_REQUIRED, _WORKFLOW_OPTIONAL = _fields(WorkflowEventPayload)


def _connection_change(payload: dict[str, Any], environment: str, event: str) -> ConnectionChange:
    """The change a connection payload states; raises ValidationError naming bad fields."""
    status = CONNECTION_STATUS_BY_EVENT[event]
    if _plain(payload, _CONNECTION_REQUIRED, _CONNECTION_OPTIONAL):
        try:
            occurred_at = parse_instant(payload["createdAt"])
        except ValueError:
            pass  # the model below names the field
        else:
            account, slug, type_ = (
                payload["linked_account_id"],
                payload["slug"],
                payload.get("type"),
            )
            return ConnectionChange(environment, account, slug, status, occurred_at, type_)
    model = ConnectionEventPayload.model_validate(payload)
    return ConnectionChange(
        environment,
        model.linked_account_id,
        model.slug,
        status,
        parse_instant(model.createdAt),
        model.type,
    )


def _workflow_outcome(payload: dict[str, Any], environment: str, event: str) -> WorkflowOutcome:
    """The outcome a workflow payload states; raises ValidationError naming bad fields."""
    fields = payload
    if not _plain(payload, _WORKFLOW_REQUIRED, _WORKFLOW_OPTIONAL):
        fields = WorkflowEventPayload.model_validate(payload).model_dump()
    status = fields.get("status") or WORKFLOW_STATUS_BY_EVENT[event]
    return WorkflowOutcome(
        environment,
        fields["instance_id"],
        fields["linked_account_id"],
        status.upper(),
        fields.get("workflow_id"),
        fields.get("workflow_name"),
        fields.get("config_id"),
    )


def _connection(
    payload: dict[str, Any], environment: str, event: str, flags: list[str]
) -> ParsedDelivery:
    try:
        change = _connection_change(payload, environment, event)
    except ValidationError as error:
        flags.extend(_field_flags(error))
        return _flagged(payload, environment, event, "connection", flags)
    if flags:  # its own identity: a flagged delivery must never stand in for a valid one
        return _flagged(payload, environment, event, "connection", flags)
    account, slug = change.linked_account_id, change.slug
    moment = format_instant(change.occurred_at)
    key = _identity("connection", environment, account, slug, event, moment)
    return ParsedDelivery(event, "connection", account, slug, None, key, (), change)


def _workflow(
    payload: dict[str, Any], environment: str, event: str, flags: list[str]
) -> ParsedDelivery:
    try:
        outcome = _workflow_outcome(payload, environment, event)
    except ValidationError as error:
        flags.extend(_field_flags(error))
        return _flagged(payload, environment, event, "workflow", flags)
    if flags:
        return _flagged(payload, environment, event, "workflow", flags)
    account, instance = outcome.linked_account_id, outcome.instance_id
    # A retry repeats the payload exactly; a second genuine failure differs somewhere in it.
    key = _identity("workflow", environment, instance, event, canonical(payload))
    return ParsedDelivery(event, "workflow", account, None, instance, key, (), outcome)

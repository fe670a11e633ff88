"""Refold event payloads, and how one delivery's bytes become a typed, flagged event."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from projector.config import normalise_environment

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
# Refold payloads nest a few levels. A body nested deeper is not JSON to us even where
# Python's parser takes it (up to ~1000 levels): pydantic cannot serialise such a payload
# (past ~255), so one delivery would break every audit answer that includes it.
MAX_DEPTH = 100


def parse_instant(value: str) -> datetime:
    """Parse Refold's RFC 1123 `createdAt` (or ISO 8601) into an aware UTC datetime."""
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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _identity(*parts: Any) -> str:
    return hashlib.sha256(_canonical(parts).encode()).hexdigest()


def _raw_identity(body: bytes, environment: str) -> str:
    return _identity("raw", environment, hashlib.sha256(body).hexdigest())


def _noting_duplicates(seen: list[bool]) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    """A json object hook that builds each object and notes one that repeats a key."""

    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        built = dict(pairs)
        if len(built) != len(pairs):  # linear: a hostile 100,000-key object stays cheap
            seen.append(True)
        return built

    return build


def _nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects in `value` nest more than `limit` deep (walked, not recursed)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def load_json_object(body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The body as a JSON object (or None), and the flag that says what is wrong with it."""
    repeated: list[bool] = []
    try:
        parsed = json.loads(
            body, parse_constant=_reject_constant, object_pairs_hook=_noting_duplicates(repeated)
        )
        # A lone surrogate (\ud800) is JSON syntax but not Unicode text: it could be neither
        # hashed, stored as text nor sent back in an answer, so such a body is not JSON to us.
        _canonical(parsed).encode()
    except (ValueError, RecursionError):  # UnicodeError is a ValueError; so is a 5000-digit int
        return None, "not_json"
    if _nests_deeper_than(parsed, MAX_DEPTH):  # as unusable as 5000 nested `[`, see MAX_DEPTH
        return None, "not_json"
    if not isinstance(parsed, dict):
        return None, "not_an_object"
    # Parsers disagree on which value of a repeated key counts (first, last, or an error), so
    # what Python reads (the last) is kept for the audit trail but not trusted as the event.
    return parsed, "duplicate_keys" if repeated else None


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
        flagged = _flagged(payload, environment, event_name, None, [flag])
        return replace(flagged, event_key=_raw_identity(body, environment))
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
) -> ParsedDelivery:
    """A delivery the projectors skip, with whatever searchable fields it does have."""
    return ParsedDelivery(
        event,
        kind,
        _text(payload.get("linked_account_id")),
        _text(payload.get("slug")),
        _text(payload.get("instance_id")),
        _identity("other", environment, _canonical(payload)),
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
    if named is None:
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


def _connection(
    payload: dict[str, Any], environment: str, event: str, flags: list[str]
) -> ParsedDelivery:
    try:
        model = ConnectionEventPayload.model_validate(payload)
    except ValidationError as error:
        flags.extend(_field_flags(error))
        return _flagged(payload, environment, event, "connection", flags)
    occurred_at = parse_instant(model.createdAt)
    key = _identity(
        "connection",
        environment,
        model.linked_account_id,
        model.slug,
        event,
        format_instant(occurred_at),
    )
    change = ConnectionChange(
        environment,
        model.linked_account_id,
        model.slug,
        CONNECTION_STATUS_BY_EVENT[event],
        occurred_at,
        model.type,
    )
    return ParsedDelivery(
        event,
        "connection",
        model.linked_account_id,
        model.slug,
        None,
        key,
        tuple(flags),
        None if flags else change,
    )


def _workflow(
    payload: dict[str, Any], environment: str, event: str, flags: list[str]
) -> ParsedDelivery:
    try:
        model = WorkflowEventPayload.model_validate(payload)
    except ValidationError as error:
        flags.extend(_field_flags(error))
        return _flagged(payload, environment, event, "workflow", flags)
    # A retry repeats the payload exactly; a second genuine failure differs somewhere in it.
    key = _identity("workflow", environment, model.instance_id, event, _canonical(payload))
    outcome = WorkflowOutcome(
        environment,
        model.instance_id,
        model.linked_account_id,
        (model.status or WORKFLOW_STATUS_BY_EVENT[event]).upper(),
        model.workflow_id,
        model.workflow_name,
        model.config_id,
    )
    return ParsedDelivery(
        event,
        "workflow",
        model.linked_account_id,
        None,
        model.instance_id,
        key,
        tuple(flags),
        None if flags else outcome,
    )

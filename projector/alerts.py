"""Alerts, pure: which folded changes need a human, the line that says so, flood grouping.

The alert projector folds the log with the read models' own folds, so a duplicate or a
stale event leaves a state unchanged, and an unchanged state raises nothing.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from projector.fold import ConnectionHealth, WorkflowRun
from projector.readmodels import ReadModel

NEEDS_RECONNECT = "connection_needs_reconnect"
RECONNECTED = "connection_reconnected"
RUN_FAILED = "workflow_run_failed"
RUN_RECOVERED = "workflow_run_recovered"
KINDS = (NEEDS_RECONNECT, RECONNECTED, RUN_FAILED, RUN_RECOVERED)
SUMMARY = "alert_summary"
# A run needs a human while its status is one of these; COMPLETED later resolves it.
FAILED_RUN_STATUSES = frozenset({"ERRORED", "TIMED_OUT"})
# How many alerts a summary names one by one.
SUMMARY_NAMES = 5
# Values from payloads are cut to this length in the text line (the `alert` keeps them whole).
TEXT_VALUE_CHARS = 80
WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class Alert:
    """One transition that needs (or no longer needs) a human, and the seq that caused it."""

    kind: str
    environment: str
    linked_account_id: str
    status: str
    seq: int
    slug: str | None = None
    instance_id: str | None = None
    workflow_id: str | None = None
    workflow_name: str | None = None

    def fields(self) -> dict[str, Any]:
        """The body's `alert` object: a connection's slug, or a run's identifiers."""
        fields: dict[str, Any] = {
            "kind": self.kind,
            "environment": self.environment,
            "linked_account_id": self.linked_account_id,
            "status": self.status,
            "seq": self.seq,
        }
        if self.instance_id is None:
            fields["slug"] = self.slug
        else:
            fields["instance_id"] = self.instance_id
            fields["workflow_id"] = self.workflow_id
            fields["workflow_name"] = self.workflow_name
        return fields

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Alert:
        return cls(**fields)


def connection_alert(
    before: ConnectionHealth | None, after: ConnectionHealth, seq: int
) -> Alert | None:
    """needs_reconnect false -> true, or true -> false (reconnected, or deleted)."""
    needed = before is not None and before.needs_reconnect
    if needed == after.needs_reconnect:
        return None
    kind = NEEDS_RECONNECT if after.needs_reconnect else RECONNECTED
    return Alert(
        kind, after.environment, after.linked_account_id, after.status, seq, slug=after.slug
    )


def run_alert(before: WorkflowRun | None, after: WorkflowRun, seq: int) -> Alert | None:
    """A run's status becomes errored or timed out; or, having been either, completed."""
    failed_before = before is not None and before.status in FAILED_RUN_STATUSES
    if after.status in FAILED_RUN_STATUSES and not failed_before:
        kind = RUN_FAILED
    elif failed_before and after.status == "COMPLETED":
        kind = RUN_RECOVERED
    else:
        return None
    return Alert(
        kind,
        after.environment,
        after.linked_account_id,
        after.status.lower(),
        seq,
        instance_id=after.instance_id,
        workflow_id=after.workflow_id,
        workflow_name=after.workflow_name,
    )


def transition(before: Any, after: Any, seq: int) -> Alert | None:
    """The alert, if any, of one state moving from `before` to `after` at `seq`."""
    if isinstance(after, ConnectionHealth):
        return connection_alert(before, after, seq)
    if isinstance(after, WorkflowRun):
        return run_alert(before, after, seq)
    raise TypeError(f"no alerts are defined for {type(after).__name__}")


def derive(
    model: ReadModel[Any, Any], states: dict[Hashable, Any], changes: Sequence[tuple[int, Any]]
) -> tuple[dict[Hashable, Any], list[Alert]]:
    """Fold `changes` onto `states` (in place) with `model`'s fold; the changed states, alerts."""
    dirty: dict[Hashable, Any] = {}
    raised: list[Alert] = []
    for seq, change in changes:
        key = model.key_of(change)
        before = states.get(key)
        try:
            after = model.fold(before, change)
        except Exception:  # the read model records it as a fold error; no alert from it
            after = None
        if after is None:
            continue
        states[key] = dirty[key] = after
        alert = transition(before, after, seq)
        if alert is not None:
            raised.append(alert)
    return dirty, raised


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _shown(value: str | None) -> str:
    """A payload value fit for one line of Slack text: no control characters, cut, escaped."""
    text = _CONTROL.sub(" ", value or "").strip() or "?"
    if len(text) > TEXT_VALUE_CHARS:
        text = text[: TEXT_VALUE_CHARS - 1] + "…"
    # Slack reads <...> as links and mentions, and & as an entity: escape all three.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def text_line(alert: Alert) -> str:
    """One human line: environment, account, app or run, what happened."""
    where = f"{alert.environment} | account {_shown(alert.linked_account_id)}"
    if alert.kind in (NEEDS_RECONNECT, RECONNECTED):
        app = f"{_shown(alert.slug)} connection"
        if alert.kind == NEEDS_RECONNECT:
            what = f"{app} expired: the customer needs to reconnect it"
        elif alert.status == "deleted":
            what = f"{app} was deleted: it no longer needs a reconnect"
        else:
            what = f"{app} reconnected"
    else:
        name = alert.workflow_name or alert.workflow_id
        run = f"workflow run {_shown(alert.instance_id)}"
        if name:
            run += f" ({_shown(name)})"
        status = alert.status.replace("_", " ")
        what = f"{run} {status}" if alert.kind == RUN_FAILED else f"{run} recovered: {status}"
    return f"{where} | {what} (seq {alert.seq})"


def body(alert: Alert) -> dict[str, Any]:
    """The JSON a receiver gets: Slack reads `text`, other consumers `alert`."""
    return {"text": text_line(alert), "alert": alert.fields()}


def summary_body(alerts: Sequence[Alert], max_per_minute: int) -> dict[str, Any]:
    """One message for a flood: the count, the count of each kind, the first few alerts."""
    kinds = Counter(alert.kind for alert in alerts)
    counted = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    first = alerts[:SUMMARY_NAMES]
    lines = [
        f"{len(alerts)} alerts at once, more than PROJECTOR_ALERT_MAX_PER_MINUTE "
        f"({max_per_minute}) a minute: {counted}. The first {len(first)}:",
        *(f"- {text_line(alert)}" for alert in first),
    ]
    if len(alerts) > len(first):
        lines.append(f"... and {len(alerts) - len(first)} more (seq {alerts[-1].seq} last)")
    return {
        "text": "\n".join(lines),
        "alert": {
            "kind": SUMMARY,
            "count": len(alerts),
            "kinds": dict(sorted(kinds.items())),
            "first": [alert.fields() for alert in first],
            "first_seq": alerts[0].seq,
            "seq": alerts[-1].seq,
        },
    }


@dataclass(frozen=True)
class Message:
    """One POST: a single alert, or a summary of several."""

    alerts: tuple[Alert, ...]
    body: dict[str, Any]

    @property
    def seqs(self) -> list[int]:
        return [alert.seq for alert in self.alerts]


def plan(waiting: Sequence[Alert], sent_in_window: int, max_per_minute: int) -> list[Message]:
    """The messages to send now for `waiting` (in seq order); [] means hold them for now.

    `sent_in_window` counts the alerts sent in the last WINDOW_SECONDS. While they and the
    waiting ones fit within `max_per_minute`, each goes alone. A flood beyond it goes as
    one summary; then, until the window has room again, alerts wait, and the next ones
    go together: a long flood sends about one summary a minute.
    """
    if not waiting:
        return []
    if sent_in_window + len(waiting) <= max_per_minute:
        return [Message((alert,), body(alert)) for alert in waiting]
    if sent_in_window >= max_per_minute:
        return []
    return [Message(tuple(waiting), summary_body(waiting, max_per_minute))]

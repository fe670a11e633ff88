"""The alert outbox's tables and statements, in the SQL both engines speak (`?` placeholders).

The alert projector keeps a state table per read model (`alert_` + its table), a one-row
checkpoint, and the outbox: one row per alert, keyed by the seq that raised it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from projector import answers
from projector.alerts import Alert
from projector.events import format_instant
from projector.readmodels import READ_MODELS, ReadModel
from projector.storage.port import FailedAttempt, OutboxRow

PENDING, SENT, FAILED = "pending", "sent", "failed"
# Changes whenever a fold does: the alert state is then seeded again (see README).
FOLD_VERSIONS = ",".join(f"{model.name}:{model.version}" for model in READ_MODELS)


def state_table(model: ReadModel[Any, Any]) -> str:
    """The table of the alert projector's own states for `model`."""
    return f"alert_{model.table}"


CHECKPOINT = "SELECT position, quiet_until, fold_versions FROM alert_checkpoint"
SET_CHECKPOINT = (
    "INSERT INTO alert_checkpoint (one_row, position, quiet_until, fold_versions)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (one_row) DO UPDATE SET position = excluded.position,"
    " quiet_until = excluded.quiet_until, fold_versions = excluded.fold_versions"
)
MOVE_CHECKPOINT = "UPDATE alert_checkpoint SET position = ?"
# A seq already queued (a seed folded it again) keeps its row: it is never sent twice.
QUEUE = (
    "INSERT INTO alert_outbox (seq, kind, fields, status, attempts, next_attempt_at)"
    " VALUES (?, ?, ?, ?, 0, 0) ON CONFLICT (seq) DO NOTHING"
)
PENDING_ROWS = (
    "SELECT seq, fields, attempts, next_attempt_at FROM alert_outbox WHERE status = ?"
    " ORDER BY seq LIMIT ?"
)
SENT_SINCE = "SELECT sent_at FROM alert_outbox WHERE sent_at >= ?"
MARK_SENT = "UPDATE alert_outbox SET status = ?, sent_at = ?, attempts = attempts + 1 WHERE seq = ?"
MARK_FAILED = (
    "UPDATE alert_outbox SET status = ?, attempts = ?, last_error = ?, next_attempt_at = ?,"
    " failed_at = ? WHERE seq = ?"
)


def seed_sql(model: ReadModel[Any, Any]) -> list[str]:
    """Replace the alert states of `model` with the read model's rows, as they stand."""
    columns = ", ".join(model.columns)
    return [
        f"DELETE FROM {state_table(model)}",
        f"INSERT INTO {state_table(model)} ({columns}) SELECT {columns} FROM {model.table}",
    ]


def upsert_sql(model: ReadModel[Any, Any]) -> str:
    """Insert or replace one alert state of `model` (one row of `?` per column)."""
    columns = ", ".join(model.columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in model.columns if c not in model.key_columns)
    return (
        f"INSERT INTO {state_table(model)} ({columns})"
        f" VALUES ({', '.join('?' * len(model.columns))})"
        f" ON CONFLICT ({', '.join(model.key_columns)}) DO UPDATE SET {updates}"
    )


def queued(raised: Sequence[Alert], quiet_until: int) -> list[tuple[Any, ...]]:
    """The outbox rows for `raised`: those past `quiet_until` (history is never alerted)."""
    return [
        (alert.seq, alert.kind, json.dumps(alert.fields(), sort_keys=True), PENDING)
        for alert in raised
        if alert.seq > quiet_until
    ]


def outbox_row(row: Sequence[Any]) -> OutboxRow:
    seq, fields, attempts, next_attempt_at = row
    return OutboxRow(int(seq), json.loads(fields), int(attempts), float(next_attempt_at))


def sent_rows(seqs: Sequence[int], at: float) -> list[tuple[Any, ...]]:
    return [(SENT, at, seq) for seq in seqs]


def failed_rows(attempts: Sequence[FailedAttempt], at: float) -> list[tuple[Any, ...]]:
    """MARK_FAILED parameters: a retry stays pending; one given up is failed, at `at`."""
    return [
        (
            PENDING if a.retry_at is not None else FAILED,
            a.attempts,
            a.error,
            a.retry_at if a.retry_at is not None else at,
            None if a.retry_at is not None else at,
            a.seq,
        )
        for a in attempts
    ]


_STATE = (
    "SELECT c.position, (SELECT count(*) FROM alert_outbox WHERE status = 'pending'),"
    " (SELECT count(*) FROM alert_outbox WHERE status = 'sent'),"
    " (SELECT count(*) FROM alert_outbox WHERE status = 'failed') FROM alert_checkpoint c"
)
_LAST_FAILURE = (
    "SELECT seq, kind, last_error, failed_at FROM alert_outbox WHERE status = 'failed'"
    " ORDER BY failed_at DESC, seq DESC LIMIT 1"
)
Fetch = Callable[[str, Sequence[Any]], Awaitable[list[tuple[Any, ...]]]]


async def outbox_state(fetch: Fetch) -> answers.AlertOutboxState | None:
    """The alert projector's position and outbox counts; None before alerting was enabled."""
    rows = await fetch(_STATE, ())
    if not rows:
        return None
    position, pending, sent, failed = rows[0]
    last = None
    if failed:
        found = await fetch(_LAST_FAILURE, ())
        if found:
            seq, kind, error, failed_at = found[0]
            at = format_instant(datetime.fromtimestamp(float(failed_at), UTC))
            last = answers.AlertFailure(seq=seq, kind=kind, error=error or "", failed_at=at)
    return answers.AlertOutboxState(
        position=position, pending=pending, sent=sent, failed=failed, last_failure=last
    )

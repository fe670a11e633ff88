"""The storage port: everything the receiver, projector, API and CLI need of a database.

Two adapters implement it, `storage.sqlite` (the embedded default) and `storage.postgres`
(several processes on one database server). All SQL lives in them and in `storage.sql`,
the read queries both engines speak; nothing outside `projector/storage/` imports a driver.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from projector import answers
from projector.events import ConnectionChange, ParsedDelivery, WorkflowOutcome, parse_delivery
from projector.integrity import ChainReport, Value, missing_row, row_hash

Change = ConnectionChange | WorkflowOutcome


class Overloaded(Exception):
    """More deliveries are waiting for the log than the configured bound: answer 503."""


class StorageUnavailable(Exception):
    """The log could not commit (or cannot be reached): answer 503, so the sender retries.

    Usually nothing of the batch was stored. If the connection dropped during the commit
    itself, it may have landed: the sender's retry is then recorded as a duplicate.
    """


class LogSchemaError(Exception):
    """The database was written by another version of refold-projector."""


@dataclass(frozen=True)
class NewDelivery:
    """A verified delivery, parsed, ready to append."""

    received_at: str
    environment: str
    key_id: str
    signed_as: str
    headers: dict[str, str]
    body: bytes
    event: str | None
    kind: str | None
    linked_account_id: str | None
    slug: str | None
    instance_id: str | None
    event_key: str
    flags: tuple[str, ...]
    # Not stored: what the projectors will fold, handed on so the live projector need not
    # parse the body again (a rebuild parses it, with the same function).
    change: Change | None = None

    @classmethod
    def verified(
        cls,
        body: bytes,
        parsed: ParsedDelivery,
        *,
        environment: str,
        received_at: str,
        key_id: str,
        signed_as: str,
        headers: dict[str, str],
    ) -> NewDelivery:
        """The row for a verified body, with the fields `parse_delivery` read from it."""
        return cls(
            received_at,
            environment,
            key_id,
            signed_as,
            headers,
            body,
            parsed.event,
            parsed.kind,
            parsed.linked_account_id,
            parsed.slug,
            parsed.instance_id,
            parsed.event_key,
            parsed.flags,
            parsed.change,
        )


def probe_delivery() -> NewDelivery:
    """The row a readiness probe appends, then rolls back: proves the write path works."""
    return NewDelivery.verified(
        b"{}",
        parse_delivery(b"{}", "test"),
        environment="test",
        received_at="1970-01-01T00:00:00Z",
        key_id="readiness-probe",
        signed_as="raw",
        headers={},
    )


# Built once (json.dumps with keywords builds an encoder per call); used for every row.
_SORTED_JSON = json.JSONEncoder(sort_keys=True)


def row_content(seq: int, delivery: NewDelivery, duplicate_of: int | None) -> tuple[Value, ...]:
    """The stored columns of `delivery` at `seq`, in `integrity.HASHED_COLUMNS` order.

    Both adapters store exactly these values and hash them with `integrity.row_hash`, so a
    log keeps its hash chain, byte for byte, on either engine.
    """
    return (
        seq,
        delivery.received_at,
        delivery.environment,
        delivery.key_id,
        delivery.signed_as,
        _SORTED_JSON.encode(delivery.headers),
        delivery.body,
        delivery.event,
        delivery.kind,
        delivery.linked_account_id,
        delivery.slug,
        delivery.instance_id,
        delivery.event_key,
        "[]" if not delivery.flags else json.dumps(list(delivery.flags)),
        duplicate_of,
    )


@dataclass(frozen=True)
class Appended:
    """Where a delivery landed, and the earlier delivery it repeats, if any."""

    seq: int
    duplicate_of: int | None


@dataclass(frozen=True)
class LoggedDelivery:
    """One row of the log, as the projectors and the audit queries read it."""

    seq: int
    received_at: str
    environment: str
    event: str | None
    linked_account_id: str | None
    flags: tuple[str, ...]
    duplicate_of: int | None
    body: bytes


@dataclass(frozen=True)
class StoredRow:
    """One row exactly as stored: `integrity.HASHED_COLUMNS` in order, and its hash.

    What `projector verify` walks and `projector copy` carries from one database to another.
    """

    content: tuple[Value, ...]
    row_hash: str

    @property
    def seq(self) -> int:
        return int(self.content[0])  # type: ignore[arg-type]


def number_batch(
    head: int, head_hash: str, batch: Sequence[NewDelivery], first_seen: dict[str, int]
) -> tuple[list[tuple[Value, ...]], list[Appended]]:
    """The rows (stored columns, then row_hash) of `batch` appended after (`head`, `head_hash`).

    `first_seen` holds the first seq already logged for each of the batch's event keys; a
    delivery whose key is there (or earlier in the batch) is a duplicate of that seq.
    """
    seq, previous = head, head_hash
    rows: list[tuple[Value, ...]] = []
    results: list[Appended] = []
    for delivery in batch:
        seq += 1
        first = first_seen.setdefault(delivery.event_key, seq)
        duplicate_of = None if first == seq else first  # the first of its event: None
        content = row_content(seq, delivery, duplicate_of)
        previous = row_hash(previous, content)
        rows.append((*content, previous))
        results.append(Appended(seq, duplicate_of))
    return rows, results


# What the projectors read of each row, in this order (`logged_deliveries`).
LOGGED_COLUMNS = (
    "seq, received_at, environment, event, linked_account_id, flags, duplicate_of, body"
)


def logged_deliveries(rows: Sequence[Sequence[Any]], after: int) -> list[LoggedDelivery]:
    """Rows of LOGGED_COLUMNS read after seq `after`, checked gap-free, as deliveries.

    Raises LogNotIntact at a missing seq: `projector verify` proves rows 1..head only up to
    a gap, so the projectors never fold a row past one.
    """
    if rows and rows[-1][0] != after + len(rows):  # seqs ascend, so only a gap breaks this
        expected = next(seq for seq, (row_seq, *_) in enumerate(rows, after + 1) if row_seq != seq)
        raise missing_row(expected, rows[expected - after - 1][0])
    return [logged_delivery(row) for row in rows]


def logged_delivery(row: Sequence[Any]) -> LoggedDelivery:
    """One row of LOGGED_COLUMNS as a delivery."""
    seq, received_at, environment, event, account, flags, duplicate_of, body = row
    return LoggedDelivery(
        seq,
        received_at,
        environment,
        event,
        account,
        () if flags == "[]" else tuple(json.loads(flags)),  # most rows: spare the parse
        duplicate_of,
        bytes(body),
    )


class RowsDoNotContinue(Exception):
    """Copied rows do not continue the destination's log: wrong seq, or a broken chain."""


def check_continues(head: int, head_hash: str, row: StoredRow) -> None:
    """Raise RowsDoNotContinue unless `row` is the next row after (`head`, `head_hash`)."""
    if row.seq != head + 1:
        raise RowsDoNotContinue(
            f"the copied row with seq {row.seq} does not continue this log, whose next seq is "
            f"{head + 1}: copy into an empty database, or resume from seq {head + 1}"
        )
    if row_hash(head_hash, row.content) != row.row_hash:
        raise RowsDoNotContinue(
            f"the copied row with seq {row.seq} does not chain to this log's head hash "
            f"{head_hash}: the two logs differ before it (run `projector verify` on both)"
        )


@dataclass(frozen=True)
class Verification:
    """What `projector verify` found: the chain walk and the engine's own checks."""

    chain: ChainReport
    checks: tuple[str, ...]  # one line per engine check, as printed
    checks_passed: bool

    @property
    def intact(self) -> bool:
        return self.chain.intact and self.checks_passed


@dataclass(frozen=True)
class CommitOutcome:
    """When the last batch of appends was committed or failed (time.monotonic)."""

    at: float
    succeeded: bool


@dataclass(frozen=True)
class ProjectionStatus:
    """Where one projection stands."""

    name: str
    version: int
    position: int
    errors: int


@dataclass(frozen=True)
class ProjectionLag:
    """Where one projection stands against the log, and how old its backlog is."""

    name: str
    position: int
    errors: int
    lag_seconds: float
    rebuilt_at: str | None  # when its current generation was swapped in (ISO 8601, UTC)


@dataclass(frozen=True)
class StorageStatus:
    """The log head and every projection's position, errors and lag."""

    log_head: int
    projections: tuple[ProjectionLag, ...]

    @property
    def max_lag_seconds(self) -> float:
        return max((p.lag_seconds for p in self.projections), default=0.0)


class ChangedRow(NamedTuple):
    """A clean delivery the change stream announces: its seq and what it changed."""

    seq: int
    kind: str
    linked_account_id: str | None
    instance_id: str | None


class EventLog(Protocol):
    """Appends to the log; each returns only once its delivery is durably stored."""

    @property
    def pending(self) -> int:
        """Deliveries waiting for a commit."""

    @property
    def last_commit(self) -> CommitOutcome | None:
        """The last batch's outcome, for readiness."""

    async def append(self, delivery: NewDelivery) -> Appended:
        """Append one delivery; raises Overloaded or StorageUnavailable (both mean 503)."""

    async def probe_write(self) -> None:
        """Append a row as the receiver would, then roll it back; raises if that fails."""


class Projector(Protocol):
    """Folds the log into the read models; in several processes, only one folds at a time."""

    @property
    def active(self) -> bool:
        """Whether this process is the one folding (it holds the projector lease)."""

    async def fold_new(self, limit: int) -> int:
        """Fold up to `limit` new deliveries; 0 when none are new or another process folds."""

    async def state_token(self) -> Hashable:
        """Changes whenever a read model may have changed, in this process or another."""

    async def wait_for_appends(self, seconds: float) -> None:
        """Return soon after a delivery is appended (by any process), or after `seconds`."""


class Reads(Protocol):
    """The queries behind the HTTP API, the change stream, readiness and the metrics."""

    async def account_connections(
        self, environment: str, account: str
    ) -> answers.AccountConnections: ...

    async def list_connections(
        self, environment: str, status: str | None, slug: str | None, limit: int, cursor: str | None
    ) -> answers.ConnectionList: ...

    async def run_summary(
        self, environment: str, instance_id: str
    ) -> answers.WorkflowRunSummary | None: ...

    async def workflow_run(
        self, environment: str, instance_id: str, limit: int, cursor: str | None
    ) -> answers.WorkflowRunAnswer | None: ...

    async def account_runs(
        self,
        environment: str,
        account: str,
        status: str | None,
        workflow_id: str | None,
        limit: int,
        cursor: str | None,
    ) -> answers.WorkflowRunList: ...

    async def audit_events(
        self,
        environment: str,
        account: str | None,
        event: str | None,
        after: int,
        limit: int,
        cursor: str | None,
        *,
        flagged: bool | None = None,
        flag: str | None = None,
    ) -> answers.AuditEventList: ...

    async def audit_event(self, environment: str, seq: int) -> answers.AuditEventDetail | None: ...

    async def projection_states(self) -> answers.Projections: ...

    async def fold_errors(
        self, name: str, limit: int, cursor: str | None
    ) -> answers.FoldErrorList: ...

    async def storage_status(self, now: datetime) -> StorageStatus: ...

    async def folded_position(self) -> int:
        """The position every projection has reached (the lowest)."""

    async def positions(self) -> tuple[int, int]:
        """The projections' common position and the log head, in one snapshot."""

    async def changed_rows(
        self, environment: str, account: str | None, after: int, until: int, limit: int
    ) -> list[ChangedRow]: ...


@dataclass(frozen=True)
class OutboxRow:
    """An alert waiting in the outbox: its seq (one alert per seq at most) and its fields."""

    seq: int
    fields: dict[str, Any]  # alerts.Alert.fields(), as stored
    attempts: int
    next_attempt_at: float  # time.time() from which it may be sent (again)


@dataclass(frozen=True)
class FailedAttempt:
    """A POST of an alert that did not get a 2xx: retry at `retry_at`, or None: given up."""

    seq: int
    attempts: int
    error: str
    retry_at: float | None


class AlertOutbox(Protocol):
    """The alert projector's state, checkpoint and outbox; never touched by a rebuild.

    On PostgreSQL, only the projector lease's holder derives (fenced in the transaction).
    """

    async def derive(self, limit: int) -> int:
        """Fold up to `limit` deliveries past the alert checkpoint, queue the alerts they raise
        and move the checkpoint, in one transaction; returns how many were folded.

        The first call on a database seeds the alert state at the log head: history is
        folded without alerting. 0 when nothing is new or another process holds the lease.
        """

    async def pending(self, limit: int) -> list[OutboxRow]:
        """Up to `limit` alerts not yet sent nor given up, in seq order."""

    async def sent_since(self, since: float) -> list[float]:
        """When each alert sent at or after `since` (time.time()) was sent."""

    async def mark_sent(self, seqs: Sequence[int], at: float) -> None: ...

    async def mark_failed(self, attempts: Sequence[FailedAttempt], at: float) -> None: ...


class Storage(Protocol):
    """One opened database: its log, its projector, its reads and its alert outbox."""

    @property
    def description(self) -> str:
        """For logs and messages: a path, or a URL without its password."""

    @property
    def log(self) -> EventLog: ...

    @property
    def projector(self) -> Projector: ...

    @property
    def reads(self) -> Reads: ...

    @property
    def alerts(self) -> AlertOutbox: ...

    async def open(self) -> None:
        """Connect, create or migrate the schema, rebuild projections whose version changed."""

    async def close(self) -> None:
        """Commit what is queued, then close every connection."""


class Maintenance(Protocol):
    """What the CLI does to a database outside a running service (verify, rebuild, copy)."""

    @property
    def description(self) -> str: ...

    async def head(self) -> tuple[int, str]:
        """The last seq and its stored hash; (0, genesis hash) for an empty log."""

    async def verify(self) -> Verification:
        """Walk the hash chain, and run the engine's own check of its files or tables."""

    async def rebuild(self) -> int:
        """Replay the log into fresh read models and swap them in; returns the head."""

    async def statuses(self) -> list[ProjectionStatus]: ...

    async def stored_rows(self, after: int, limit: int) -> list[StoredRow]:
        """Up to `limit` rows with seq > `after`, exactly as stored, in seq order."""

    async def append_stored(self, rows: Sequence[StoredRow]) -> None:
        """Append rows copied from another log, unchanged; they must continue this log's chain."""

    async def close(self) -> None: ...

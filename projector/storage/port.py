"""The storage port: everything the receiver, projector, API and CLI need of a database.

Two adapters implement it, `storage.sqlite` (the embedded default) and `storage.postgres`
(several processes on one database server). All SQL lives in them and in `storage.queries`,
the read queries both engines speak; nothing outside `projector/storage/` imports a driver.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol

from projector import answers
from projector.integrity import ChainReport
from projector.storage.rows import Appended, NewDelivery, StoredRow


class Overloaded(Exception):
    """More deliveries are waiting for the log than the configured bound: answer 503."""


class StorageUnavailable(Exception):
    """The log could not commit (or cannot be reached): answer 503, so the sender retries.

    Usually nothing of the batch was stored. If the connection dropped during the commit
    itself, it may have landed: the sender's retry is then recorded as a duplicate.
    """


class RebuildSuperseded(Exception):
    """A newer rebuild started while this one ran; the newer one carries on alone."""


class LogSchemaError(Exception):
    """The database was written by another version of refold-projector."""


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

    async def account_connections_json(self, environment: str, account: str) -> bytes:
        """The same answer as its JSON body, as the API sends it (cheaper than the model)."""

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

    @property
    def shared_changes(self) -> Callable[[], int] | None:
        """Another process's count of read-model changes, for the answer cache to follow."""

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

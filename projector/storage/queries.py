"""The read queries behind the API, in the SQL both engines speak; each adapter runs them.

Written with `?` placeholders; an adapter's `fetch` runs them on its engine (PostgreSQL's
turns each `?` into `%s`). The few terms the engines spell differently are in `Dialect`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from projector import answers
from projector.cursors import decode_cursor, encode_cursor
from projector.fold.workflows import STATUS_PRECEDENCE
from projector.http import header_text
from projector.integrity import GENESIS_HASH
from projector.json_body import load_json_object
from projector.storage.account_reads import AccountReads
from projector.storage.compact import headers_of, hex_of, instant_of
from projector.storage.outbox_sql import outbox_state
from projector.storage.status_queries import Fetch, StatusReads


@dataclass(frozen=True)
class Dialect:
    """The terms SQLite and PostgreSQL spell differently."""

    # Joins a VALUES list to a table in the order written: SQLite's planner obeys CROSS JOIN
    # (a lookup per listed key); PostgreSQL takes no ON after CROSS JOIN and plans it well.
    values_join: str
    # A delivery whose JSON list of flags holds the flag bound to `?`.
    has_flag: str


SQLITE = Dialect(
    values_join="CROSS JOIN",
    # One element of the JSON list, compared whole: missing_field:slu is not missing_field:slug.
    has_flag="EXISTS (SELECT 1 FROM json_each(deliveries.flags) AS f WHERE f.value = ?)",
)
# jsonb_exists is the `?` operator under its function name: `?` here marks parameters.
POSTGRES = Dialect(
    values_join="JOIN", has_flag="jsonb_exists(deliveries.flags::jsonb, CAST(? AS text))"
)

# Clean deliveries store exactly '[]'; a query uses the flagged index only with this term.
FLAGGED = "flags <> '[]'"

_RUN_COLUMNS = (
    "instance_id, workflow_id, workflow_name, config_id, linked_account_id, environment, status"
)
_RUN_COLUMNS_OF_R = ", ".join(f"r.{column}" for column in _RUN_COLUMNS.split(", "))
_EVENT_COLUMNS = (
    "seq, received_at, environment, event, linked_account_id, duplicate_of, flags, body"
)
# What a run list's `status` filter takes: the four statuses Refold documents, and `other`
# for the runs whose payloads named any status beyond them (kept as sent, lower-cased).
OTHER_RUN_STATUS = "other"
RUN_STATUS_FILTERS = (*(status.lower() for status in STATUS_PRECEDENCE), OTHER_RUN_STATUS)

# Every projection's name, version, position, fold errors and generation; errors count only
# in the current generation: a rebuild starts clean.
PROJECTIONS_QUERY = (
    "SELECT p.name, p.version, p.position, (SELECT count(*) FROM projection_errors e"
    " WHERE e.name = p.name AND e.generation = p.generation), p.generation"
    " FROM projections p ORDER BY p.name"
)


def _run_summary(row: Sequence[Any]) -> answers.WorkflowRunSummary:
    instance, workflow, name, config, account, environment, status = row
    return answers.WorkflowRunSummary(
        instance_id=instance,
        workflow_id=workflow,
        workflow_name=name,
        config_id=config,
        linked_account_id=account,
        environment=environment,
        status=status.lower(),
    )


def _audit_fields(row: Sequence[Any]) -> dict[str, Any]:
    seq, received_at, environment, event, account, duplicate_of, flags, body = row
    payload, _ = load_json_object(bytes(body))
    return {
        "seq": seq,
        "received_at": instant_of(received_at),
        "environment": environment,
        "event": event,
        "linked_account_id": account,
        "duplicate": duplicate_of is not None,
        "flags": json.loads(flags),
        "payload": payload,
    }


class SqlReads(StatusReads):
    """Every read of the API (port.Reads), over one adapter's `fetch`."""

    def __init__(self, fetch: Fetch, dialect: Dialect) -> None:
        super().__init__(fetch)
        self._dialect = dialect
        self._accounts = AccountReads(fetch, dialect.values_join)

    async def account_connections(
        self, environment: str, account: str
    ) -> answers.AccountConnections:
        """Every connection of one account; an unknown account has none."""
        rows = await self._accounts.rows(environment, account)
        # model_construct: these rows are the fold's own output, so validating them again
        # would only cost the busiest query its time (the answer is the same JSON).
        connections = [
            answers.AccountConnection.model_construct(
                slug=slug,
                status=status,
                status_since=since,
                type=type_,
                needs_reconnect=status == "expired",
                first_seen=first,
                last_event_at=last,
            )
            for slug, status, since, type_, first, last in rows
        ]
        return answers.AccountConnections.model_construct(
            linked_account_id=account,
            environment=environment,
            needs_reconnect=any(c.needs_reconnect for c in connections),
            connections=connections,
        )

    async def account_connections_json(self, environment: str, account: str) -> bytes:
        """`account_connections` as its JSON body, built without the answer models."""
        return banner_json(environment, account, await self._accounts.rows(environment, account))

    async def list_connections(
        self, environment: str, status: str | None, slug: str | None, limit: int, cursor: str | None
    ) -> answers.ConnectionList:
        """Connections by (account, slug), optionally of one status or app."""
        where, params = ["environment = ?"], [environment]
        for column, value in (("status", status), ("slug", slug)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if cursor is not None:
            where.append("(linked_account_id, slug) > (?, ?)")
            params.extend(decode_cursor(cursor, str, str))
        rows = await self._rows(
            "SELECT linked_account_id, slug, status, status_since FROM connections"
            f" WHERE {' AND '.join(where)} ORDER BY linked_account_id, slug LIMIT ?",
            *params,
            limit + 1,
        )
        items = [
            answers.ConnectionSummary(linked_account_id=a, slug=s, status=st, status_since=since)
            for a, s, st, since in rows[:limit]
        ]
        more = len(rows) > limit
        last = items[-1] if more else None
        return answers.ConnectionList(
            connections=items,
            next_cursor=encode_cursor(last.linked_account_id, last.slug) if last else None,
        )

    async def run_summary(
        self, environment: str, instance_id: str
    ) -> answers.WorkflowRunSummary | None:
        """One run's fields without its deliveries (what the change stream sends), or None."""
        rows = await self._rows(
            f"SELECT {_RUN_COLUMNS} FROM workflow_runs WHERE environment = ? AND instance_id = ?",
            environment,
            instance_id,
        )
        return _run_summary(rows[0]) if rows else None

    async def workflow_run(
        self, environment: str, instance_id: str, limit: int, cursor: str | None
    ) -> answers.WorkflowRunAnswer | None:
        """One run and a page of the deliveries that spoke of it (by seq), or None if unknown."""
        after = decode_cursor(cursor, int)[0] if cursor is not None else 0
        # One statement, so one snapshot: the run's status and its page of deliveries cannot
        # disagree because a delivery was appended and folded between two reads.
        rows = await self._rows(
            f"SELECT {_RUN_COLUMNS_OF_R}, d.seq, d.event, d.body, d.duplicate_of"
            " FROM workflow_runs AS r LEFT JOIN (SELECT seq, event, body, duplicate_of"
            " FROM deliveries WHERE environment = ? AND instance_id = ? AND seq > ?"
            " ORDER BY seq LIMIT ?) AS d ON true"
            " WHERE r.environment = ? AND r.instance_id = ? ORDER BY d.seq",
            environment,
            instance_id,
            after,
            limit + 1,
            environment,
            instance_id,
        )
        if not rows:
            return None
        # A page without deliveries comes back as one row whose delivery columns are NULL.
        logged = [row[7:] for row in rows if row[7] is not None]
        deliveries = []
        for seq, event, body, duplicate_of in logged[:limit]:
            payload, _ = load_json_object(bytes(body))
            status = payload.get("status") if payload else None
            deliveries.append(
                answers.RunDelivery(
                    seq=seq,
                    event=event,
                    duplicate=duplicate_of is not None,
                    status=status.lower() if isinstance(status, str) else None,
                )
            )
        more = len(logged) > limit
        return answers.WorkflowRunAnswer(
            **_run_summary(rows[0][:7]).model_dump(),
            deliveries=deliveries,
            next_cursor=encode_cursor(deliveries[-1].seq) if more else None,
        )

    async def account_runs(
        self,
        environment: str,
        account: str,
        status: str | None,
        workflow_id: str | None,
        limit: int,
        cursor: str | None,
    ) -> answers.WorkflowRunList:
        """An account's runs by instance_id, optionally of one status or workflow."""
        where, params = ["environment = ?", "linked_account_id = ?"], [environment, account]
        if status == OTHER_RUN_STATUS:
            where.append(f"status NOT IN ({', '.join('?' * len(STATUS_PRECEDENCE))})")
            params.extend(STATUS_PRECEDENCE)
        elif status is not None:
            where.append("status = ?")
            params.append(status.upper())
        if workflow_id is not None:
            where.append("workflow_id = ?")
            params.append(workflow_id)
        if cursor is not None:
            where.append("instance_id > ?")
            params.extend(decode_cursor(cursor, str))
        rows = await self._rows(
            f"SELECT {_RUN_COLUMNS} FROM workflow_runs WHERE {' AND '.join(where)}"
            " ORDER BY instance_id LIMIT ?",
            *params,
            limit + 1,
        )
        runs = [_run_summary(row) for row in rows[:limit]]
        more = len(rows) > limit
        return answers.WorkflowRunList(
            runs=runs, next_cursor=encode_cursor(runs[-1].instance_id) if more else None
        )

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
    ) -> answers.AuditEventList:
        """Every verified delivery in log order, duplicates and flagged ones included.

        `flagged` keeps only flagged (True) or clean (False) ones; `flag` those carrying it.
        """
        if cursor is not None:
            after = max(after, decode_cursor(cursor, int)[0])
        where, params = ["environment = ?", "seq > ?"], [environment, after]
        for column, value in (("linked_account_id", account), ("event", event)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if flagged is not None:
            where.append(FLAGGED if flagged else f"NOT ({FLAGGED})")
        if flag is not None:
            # The FLAGGED term lets the engine read only the flagged rows' index.
            where.append(FLAGGED)
            where.append(self._dialect.has_flag)
            params.append(flag)
        rows = await self._rows(
            f"SELECT {_EVENT_COLUMNS} FROM deliveries WHERE {' AND '.join(where)}"
            " ORDER BY seq LIMIT ?",
            *params,
            limit + 1,
        )
        items = [answers.AuditEvent(**_audit_fields(row)) for row in rows[:limit]]
        more = len(rows) > limit
        return answers.AuditEventList(
            events=items, next_cursor=encode_cursor(items[-1].seq) if more else None
        )

    async def audit_event(self, environment: str, seq: int) -> answers.AuditEventDetail | None:
        """One delivery with its exact bytes, or None."""
        rows = await self._rows(
            f"SELECT {_EVENT_COLUMNS}, key_id, signed_as, headers FROM deliveries"
            " WHERE seq = ? AND environment = ?",
            seq,
            environment,
        )
        if not rows:
            return None
        row = rows[0]
        return answers.AuditEventDetail(
            **_audit_fields(row[:8]),
            duplicate_of=row[5],
            key_id=row[8],
            signed_as=row[9],
            # Rows logged before header_text existed may hold lone surrogates: escape them.
            headers={k: header_text(v) for k, v in json.loads(headers_of(row[10])).items()},
            body_base64=base64.b64encode(bytes(row[7])).decode(),
        )

    async def projection_states(self) -> answers.Projections:
        """The log head and where every projection stands."""
        head = await self._rows("SELECT seq, row_hash FROM deliveries ORDER BY seq DESC LIMIT 1")
        rows = await self._rows(PROJECTIONS_QUERY)
        seq, head_hash = head[0] if head else (0, GENESIS_HASH)
        return answers.Projections(
            log_head=seq,
            log_head_hash=hex_of(head_hash),
            projections=[
                answers.ProjectionState(name=n, version=v, position=p, errors=e, generation=g)
                for n, v, p, e, g in rows
            ],
            alerts=await outbox_state(self._fetch),
        )

    async def fold_errors(self, name: str, limit: int, cursor: str | None) -> answers.FoldErrorList:
        """The events projection `name` raised on in its current generation, by seq."""
        after = 0 if cursor is None else decode_cursor(cursor, int)[0]
        # One statement, so one snapshot: a rebuild's swap cannot mix two generations' errors.
        rows = await self._rows(
            "SELECT e.seq, d.environment, d.event, e.error FROM projections AS p"
            " JOIN projection_errors AS e ON e.name = p.name AND e.generation = p.generation"
            " JOIN deliveries AS d ON d.seq = e.seq"
            " WHERE p.name = ? AND e.seq > ? ORDER BY e.seq LIMIT ?",
            name,
            after,
            limit + 1,
        )
        items = [
            answers.FoldError(seq=seq, environment=environment, event=event, error=error)
            for seq, environment, event, error in rows[:limit]
        ]
        more = len(rows) > limit
        return answers.FoldErrorList(
            projection=name,
            errors=items,
            next_cursor=encode_cursor(items[-1].seq) if more else None,
        )


def banner_json(environment: str, account: str, rows: Sequence[tuple[Any, ...]]) -> bytes:
    """The banner answer's JSON, byte for byte what `answers.AccountConnections` renders.

    The busiest read skips the models: building and dumping them cost ~18 µs of the event
    loop per answer, this ~2 µs. Same keys in the same order; every value is a string, a
    bool or null, which orjson and pydantic write alike (a test checks it on any text).
    """
    connections = [
        {
            "slug": slug,
            "status": status,
            "status_since": since,
            "type": type_,
            "needs_reconnect": status == "expired",
            "first_seen": first,
            "last_event_at": last,
        }
        for slug, status, since, type_, first, last in rows
    ]
    return orjson.dumps(
        {
            "linked_account_id": account,
            "environment": environment,
            "needs_reconnect": any(c["needs_reconnect"] for c in connections),
            "connections": connections,
        }
    )

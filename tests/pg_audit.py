"""Audits of a PostgreSQL log against the answers a load got: lost, extra, duplicates, verify."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from projector.storage.location import PostgresUrl
from tests.pg_load import Load, delivery
from tests.postgres_support import query, read_models
from tests.support import run_cli, service_env

# Service.db names no file on PostgreSQL (PROJECTOR_DB overrides it): only its logs' names.
PLACEHOLDER_DB = Path("postgres.sqlite3")


def postgres_env(url: PostgresUrl) -> dict[str, str]:
    """The environment of a `projector` command on the database at `url`."""
    return service_env(PLACEHOLDER_DB, PROJECTOR_DB=url.url)


@dataclass
class LogAudit:
    """The log compared with the answers: each count but `acknowledged`/`rows` should be 0."""

    acknowledged: int = 0
    rows: int = 0
    lost: int = 0  # answered 200, yet the log holds fewer rows of that body than 200s
    extra: int = 0  # more rows of a body than times it was sent
    corrupt: int = 0  # rows whose body was never sent
    duplicates_applied: int = 0  # repeats of an event not marked duplicate_of its first row
    stored_unacknowledged: int = 0  # sent, stored, but the answer was not 200 (allowed)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        bad = self.lost + self.extra + self.corrupt + self.duplicates_applied
        return bad == 0 and not self.problems

    def line(self) -> str:
        return (
            f"acknowledged {self.acknowledged}, log rows {self.rows}, lost {self.lost}, "
            f"extra {self.extra}, corrupt {self.corrupt}, duplicates applied "
            f"{self.duplicates_applied}, stored-but-unacknowledged {self.stored_unacknowledged}"
            + "".join(f"; PROBLEM: {problem}" for problem in self.problems)
        )


async def audit_log(url: PostgresUrl, load: Load) -> LogAudit:
    """Every 200 is a row of its body; nothing else is; seq is 1..N; repeats are marked.

    The load may still be running: answers are read before the log, what was sent after it.
    """
    # Each 200 came after its commit, so the rows read next include every one counted here;
    # and every row read was sent before the count of what was sent is taken.
    acked = Counter(o.body for o in list(load.outcomes) if o.status == 200)
    rows, head = await _log_snapshot(url)
    sent = Counter(delivery(i)[1] for i in range(load.issued))
    audit = LogAudit(acknowledged=sum(acked.values()), rows=len(rows))
    seqs = [int(seq) for seq, *_ in rows]
    if seqs != list(range(1, len(rows) + 1)):
        gaps = sorted(set(range(1, (seqs[-1] if seqs else 0) + 1)) - set(seqs))[:5]
        audit.problems.append(f"seq is not 1..{len(rows)} without gaps; missing e.g. {gaps}")
    logged = Counter(bytes(body) for _, body, _, _ in rows)
    audit.lost = sum(max(0, n - logged[body]) for body, n in acked.items())
    audit.extra = sum(max(0, logged[body] - n) for body, n in sent.items())
    audit.corrupt = sum(n for body, n in logged.items() if body not in sent)
    audit.stored_unacknowledged = sum(max(0, n - acked[body]) for body, n in logged.items())
    audit.duplicates_applied = _unmarked_repeats(rows)
    if head != len(rows):
        audit.problems.append(f"log_head says {head}, the log holds {len(rows)} rows")
    return audit


async def _log_snapshot(url: PostgresUrl) -> tuple[list[tuple[Any, ...]], int]:
    """The log's rows and its head's seq, read in one snapshot (appends may go on)."""
    conn = await psycopg.AsyncConnection.connect(url.url)
    try:
        await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        async with conn.transaction():
            cur = await conn.execute(
                "SELECT seq, body, event_key, duplicate_of FROM deliveries ORDER BY seq"
            )
            rows = await cur.fetchall()
            cur = await conn.execute("SELECT seq FROM log_head")
            head = await cur.fetchone()
    finally:
        await conn.close()
    return rows, -1 if head is None else int(head[0])


def _unmarked_repeats(rows: list[tuple[Any, ...]]) -> int:
    """Rows of an event seen before that do not name its first row (or a first that does)."""
    by_key: dict[str, list[tuple[int, object]]] = defaultdict(list)
    for seq, _, event_key, duplicate_of in rows:
        by_key[str(event_key)].append((int(seq), duplicate_of))
    wrong = 0
    for seen in by_key.values():
        first = seen[0][0]
        wrong += seen[0][1] is not None
        wrong += sum(duplicate_of != first for _, duplicate_of in seen[1:])
    return wrong


async def verify(url: PostgresUrl) -> tuple[bool, str]:
    """`projector verify` on the database: whether it exited 0, and what it printed."""
    done = await asyncio.to_thread(run_cli, "verify", env=postgres_env(url))
    return done.returncode == 0, done.stdout + done.stderr


async def live_equals_rebuild(url: PostgresUrl) -> list[str]:
    """Problems found comparing the live read models with `projector rebuild`'s (none: [])."""
    problems: list[str] = []
    errors = await query(url, "SELECT count(*) FROM projection_errors")
    if errors != [(0,)]:
        problems.append(f"projection errors recorded: {errors}")
    live = await read_models(url)
    rebuilt = await asyncio.to_thread(run_cli, "rebuild", env=postgres_env(url))
    if rebuilt.returncode != 0:
        problems.append(f"projector rebuild failed: {rebuilt.stdout}{rebuilt.stderr}")
    if await read_models(url) != live:
        problems.append("the live read models differ from a rebuild from the log")
    return problems

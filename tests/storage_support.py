"""Storage test support: deliveries built from bodies, and real SQLite logs on disk."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from projector.config import fingerprint
from projector.events import ConnectionChange, parse_delivery
from projector.fold import ConnectionHealth, fold_connection
from projector.integrity import GENESIS_HASH, HASHED_COLUMNS, row_hash
from projector.readmodels import READ_MODELS
from projector.sender import environment_of
from projector.storage.rows import NewDelivery, logical_form, number_batch, row_content
from projector.storage.sqlite import chain, log, projection, replay
from tests.support import KEY_BY_ENVIRONMENT, sample_bodies

RECEIVED_AT = "2026-07-01T12:00:00Z"
# A validly signed body that is neither JSON nor UTF-8: kept, flagged, skipped.
ODD_BODY = b"\xff\xfe\x00 not json, not UTF-8 \x80"


def new_delivery(body: bytes, environment: str, received_at: str = RECEIVED_AT) -> NewDelivery:
    """The delivery the receiver would append for `body` verified with `environment`'s key."""
    return NewDelivery.verified(
        body,
        parse_delivery(body, environment),
        environment=environment,
        received_at=received_at,
        key_id=fingerprint(environment, KEY_BY_ENVIRONMENT[environment]),
        signed_as="raw",
        headers={"content-type": "application/json"},
    )


def delivery_of(body: bytes) -> NewDelivery:
    """A sample body as a delivery, in the environment it names (test when it names none)."""
    return new_delivery(body, environment_of(body, "test"))


def sample_deliveries() -> list[NewDelivery]:
    """The whole sample stream, as deliveries."""
    return [delivery_of(body) for body in sample_bodies()]


def open_log(path: Path) -> sqlite3.Connection:
    """A writer connection on a migrated log."""
    conn = log.connect(path)
    log.migrate(conn)
    return conn


def logical_rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    """Every row of the log (seq 1 up) as its logical content, then its hash (hex)."""
    return [(*row.content, row.row_hash) for row in chain.rows_after(conn, 0, 1_000_000)]


def append_as_version_3(conn: sqlite3.Connection, deliveries: list[NewDelivery]) -> None:
    """Append as refold-projector did up to log schema version 3: every column as its text."""
    seq, previous = chain.head_hash(conn)
    earlier = "SELECT event_key, min(seq) FROM deliveries WHERE seq > 0 GROUP BY event_key"
    first_seen = {key: first for key, first in conn.execute(earlier)}
    rows, _, _ = number_batch(seq, previous, deliveries, first_seen)
    logical = [logical_form(row) for row in rows]
    columns = ", ".join((*HASHED_COLUMNS, "row_hash"))
    with log.transaction(conn):
        conn.executemany(
            f"INSERT INTO deliveries ({columns}) VALUES ({', '.join('?' * 16)})",
            [(*row.content, row.row_hash) for row in logical],
        )


def open_projected(path: Path) -> sqlite3.Connection:
    """A writer connection on a migrated log whose projections exist (as start-up leaves it)."""
    conn = open_log(path)
    projection.prepare(conn)
    replay.rebuild(conn)
    return conn


def append_all(conn: sqlite3.Connection, deliveries: Iterable[NewDelivery]) -> None:
    """Append deliveries one batch per delivery, as separate requests would."""
    for delivery in deliveries:
        log.append_batch(conn, [delivery])


def catch_up(conn: sqlite3.Connection, limit: int = 500) -> None:
    """Fold until the projections have read the whole log."""
    while projection.catch_up_batch(conn, limit):
        pass


def table_rows(conn: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    """Every row of a read-model table, in a fixed order."""
    return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3").fetchall()


def read_models(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Both read-model tables, in a fixed order."""
    return {table: table_rows(conn, table) for table in ("connections", "workflow_runs")}


def rebuilt(path: Path, deliveries: list[NewDelivery]) -> dict[str, list[tuple[Any, ...]]]:
    """The read models a fresh log of `deliveries` rebuilds to."""
    conn = open_log(path)
    log.append_batch(conn, deliveries)
    replay.rebuild(conn)
    tables = read_models(conn)
    conn.close()
    return tables


# --- a read model whose fold fails on one connection ----------------------------------------

NAMES = sorted(model.name for model in READ_MODELS)
BROKEN_SLUG = "brokenapp"
BROKEN_BODY = (
    b'{"linked_account_id":"acct_broken","org_id":"o","environment":"live","type":"General",'
    b'"event":"Connection Created","slug":"brokenapp","createdAt":"Mon, 01 Jun 2026 05:42:56 GMT"}'
)


def positions(conn: sqlite3.Connection) -> dict[str, int]:
    """Each projection's position."""
    return {s.name: s.position for s in projection.statuses(conn)}


def fail_on_broken_slug(state: ConnectionHealth | None, change: ConnectionChange) -> Any:
    if change.slug == BROKEN_SLUG:
        raise RuntimeError(f"fold bug on {change.slug}")
    return fold_connection(state, change)


def populated_log(path: Path) -> Path:
    """The sample stream plus ODD_BODY at `path`, appended and fully projected."""
    conn = open_projected(path)
    log.append_batch(conn, [*sample_deliveries(), new_delivery(ODD_BODY, "live")])
    catch_up(conn)
    conn.close()
    return path


def direct(path: Path, sql: str, *params: Any) -> list[Any]:
    """Rows read with plain sqlite3, to compare the queries against."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def before_first_begin(conn: sqlite3.Connection, race: Callable[[], Any]) -> list[Any]:
    """Run `race` once, just before `conn` opens its first transaction; collects its result.

    This is how a test has "another process" act between what `conn` read and its write.
    The caller clears the trace (`conn.set_trace_callback(None)`) when done.
    """
    results: list[Any] = []

    def trace(statement: str) -> None:
        if statement.startswith("BEGIN") and not results:
            results.append(race())

    conn.set_trace_callback(trace)
    return results


# --- an attacker with file access ---------------------------------------------------------

# A valid event that no sample delivery touches: if it is folded, its account shows up.
SLIPPED_ACCOUNT = "acct_slipped"
SLIPPED_BODY = (
    b'{"linked_account_id":"acct_slipped","org_id":"o","environment":"live","type":"General",'
    b'"event":"Connection Expired","slug":"gmail","createdAt":"Mon, 01 Jun 2026 05:42:56 GMT"}'
)


def without_seq_check(path: Path) -> None:
    """Give the log at `path` the schema logs created before `CHECK (seq > 0)` still have."""
    # If the CHECK were left in place, slip_in below seq 1 would fail: no test passes by it.
    conn = sqlite3.connect(path)
    try:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'deliveries'").fetchone()[0]
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "UPDATE sqlite_master SET sql = ? WHERE name = 'deliveries'",
            (sql.replace(" CHECK (seq > 0)", ""),),
        )
        conn.commit()
    finally:
        conn.close()  # the next connection reads the edited schema


def slip_in(conn: sqlite3.Connection, seq: int, delivery: NewDelivery) -> None:
    """Insert `delivery` at `seq` as someone editing the file would: guard triggers dropped."""
    for (trigger,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'deliveries'"
    ).fetchall():
        conn.execute(f"DROP TRIGGER {trigger}")
    content = row_content(seq, delivery, None)
    columns = ", ".join((*HASHED_COLUMNS, "row_hash"))
    conn.execute(
        f"INSERT INTO deliveries ({columns}) VALUES ({', '.join('?' * 16)})",
        (*content, row_hash(GENESIS_HASH, content)),
    )

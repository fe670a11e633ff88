"""One append transaction on PostgreSQL: seqs and the hash chain under the log_head lock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from projector.integrity import HASHED_COLUMNS, Value
from projector.storage.compact import headers_as_bytes, hex_of
from projector.storage.postgres.connect import Connection
from projector.storage.rows import (
    Appended,
    NewDelivery,
    RowsDoNotContinue,
    StoredRow,
    number_batch,
    stored_form,
)

LOG_CHANNEL = "projector_log"

# Locks the head row until this transaction ends: appenders of every process queue here,
# so each one reads the head its predecessor committed. Commit order is therefore seq order
# and seqs have no gaps, which is what lets a follower read `seq > position` safely.
HEAD_FOR_UPDATE = "SELECT seq, row_hash FROM log_head FOR UPDATE"

_TYPES = (
    "bigint",  # seq
    *["text"] * 4,  # received_at, environment, key_id, signed_as
    "bytea",  # headers, compact (`compact`)
    "bytea",  # body
    *["text"] * 5,  # event, kind, linked_account_id, slug, instance_id
    "bytea",  # event_key, 32 bytes
    "text",  # flags
    "bigint",  # duplicate_of
    "bytea",  # row_hash, 32 bytes
)
_HEADERS = HASHED_COLUMNS.index("headers")
_EVENT_KEY = HASHED_COLUMNS.index("event_key")
# One array per column: the same statement for any number of rows, so it is prepared once;
# sent in binary (%b), which halves the insert's time against text arrays of bodies.
INSERT_ROWS = (
    f"INSERT INTO deliveries ({', '.join(HASHED_COLUMNS)}, row_hash)"
    f" SELECT * FROM unnest({', '.join(f'%b::{t}[]' for t in _TYPES)})"
)


def as_columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Stored rows (`postgres_form`) as one list per column, for INSERT_ROWS."""
    return [list(column) for column in zip(*rows, strict=True)]


def postgres_form(row: Sequence[Value]) -> tuple[Value, ...]:
    """A row in `stored_form` (received_at as text) as PostgreSQL's typed columns hold it.

    The hex digests must have their 32-byte form: bytea holds no text kept as it is.
    """
    out = list(row)
    out[_HEADERS] = headers_as_bytes(out[_HEADERS])  # type: ignore[arg-type]
    for at, name in ((_EVENT_KEY, "event_key"), (-1, "row_hash")):
        if not isinstance(out[at], bytes):
            raise RowsDoNotContinue(
                f"the row with seq {out[0]!r} has a {name} that is not a lowercase SHA-256 hex "
                f"digest ({out[at]!r}), which a PostgreSQL log stores as 32 bytes: this log was "
                "not written by refold-projector; keep it in SQLite"
            )
    return tuple(out)


def stored_rows_for_postgres(rows: Sequence[StoredRow]) -> list[tuple[Value, ...]]:
    """Logical rows (a copy's) as PostgreSQL stores them."""
    return [postgres_form(stored_form(r.content, r.row_hash, instants=False)) for r in rows]


# The first seq of each key: the index on its first 8 bytes finds the few candidates, the
# whole key picks among them. A plan that stays cheap before ANALYZE has seen the table,
# when `min(seq) ... GROUP BY` scans it whole.
FIRST_SEQS = (
    "SELECT k.key, (SELECT min(d.seq) FROM deliveries AS d"
    " WHERE substring(d.event_key FROM 1 FOR 8) = substring(k.key FROM 1 FOR 8)"
    " AND d.event_key = k.key AND d.seq > 0) FROM unnest(%s::bytea[]) AS k(key)"
)


async def append_rows(conn: Connection, batch: Sequence[NewDelivery]) -> list[Appended]:
    """Append deliveries inside the caller's transaction; the head moves and is announced.

    Run it in pipeline mode (`conn.pipeline()` around the transaction): the BEGIN, the head's
    lock and the lookup of earlier seqs then go in one round trip, and the rows, the new head,
    the announcement and the COMMIT in a second, so the head lock is held for little more
    than one round trip.
    """
    keys = list({bytes.fromhex(delivery.event_key) for delivery in batch})
    head_read = await conn.execute(HEAD_FOR_UPDATE)
    # The server runs this after the lock is ours, and in READ COMMITTED a statement sees
    # every commit before it began: every earlier appender's rows.
    seen_read = await conn.execute(FIRST_SEQS, (keys,))
    head = await head_read.fetchone()
    assert head is not None, "log_head holds exactly one row (created with the schema)"
    # seq > 0 above: a row slipped in below the chain must not make a delivery a repeat.
    first_seen = {
        hex_of(key): int(seq) for key, seq in await seen_read.fetchall() if seq is not None
    }
    rows, results, previous = number_batch(
        int(head[0]), str(head[1]), batch, first_seen, instants=False
    )
    if not rows:
        return results
    seq = results[-1].seq
    # NOTIFY is delivered at commit, so no process hears of rows it cannot see yet.
    await conn.execute(INSERT_ROWS, as_columns([postgres_form(row) for row in rows]))
    await conn.execute("UPDATE log_head SET seq = %s, row_hash = %s", (seq, previous))
    await conn.execute("SELECT pg_notify(%s, %s)", (LOG_CHANNEL, str(seq)))
    return results

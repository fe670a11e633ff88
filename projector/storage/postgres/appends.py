"""One append transaction on PostgreSQL: seqs and the hash chain under the log_head lock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from projector.integrity import HASHED_COLUMNS
from projector.storage.postgres.connect import Connection
from projector.storage.rows import Appended, NewDelivery, number_batch

LOG_CHANNEL = "projector_log"

# Locks the head row until this transaction ends: appenders of every process queue here,
# so each one reads the head its predecessor committed. Commit order is therefore seq order
# and seqs have no gaps, which is what lets a follower read `seq > position` safely.
HEAD_FOR_UPDATE = "SELECT seq, row_hash FROM log_head FOR UPDATE"

_TYPES = (
    "bigint",  # seq
    *["text"] * 5,  # received_at, environment, key_id, signed_as, headers
    "bytea",  # body
    *["text"] * 7,  # event, kind, linked_account_id, slug, instance_id, event_key, flags
    "bigint",  # duplicate_of
    "text",  # row_hash
)
# One array per column: the same statement for any number of rows, so it is prepared once;
# sent in binary (%b), which halves the insert's time against text arrays of bodies.
INSERT_ROWS = (
    f"INSERT INTO deliveries ({', '.join(HASHED_COLUMNS)}, row_hash)"
    f" SELECT * FROM unnest({', '.join(f'%b::{t}[]' for t in _TYPES)})"
)


def as_columns(rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Rows of (HASHED_COLUMNS..., row_hash) as one list per column, for INSERT_ROWS."""
    return [list(column) for column in zip(*rows, strict=True)]


# The first seq of each key, one index probe per key (`ORDER BY seq LIMIT 1` on the
# (event_key, seq) index): a plan that stays cheap before ANALYZE has seen the table, when
# `min(seq) ... GROUP BY` scans it whole.
FIRST_SEQS = (
    "SELECT k.key, (SELECT d.seq FROM deliveries AS d WHERE d.event_key = k.key AND d.seq > 0"
    " ORDER BY d.seq LIMIT 1) FROM unnest(%s::text[]) AS k(key)"
)


async def append_rows(conn: Connection, batch: Sequence[NewDelivery]) -> list[Appended]:
    """Append deliveries inside the caller's transaction; the head moves and is announced.

    Run it in pipeline mode (`conn.pipeline()` around the transaction): the BEGIN, the head's
    lock and the lookup of earlier seqs then go in one round trip, and the rows, the new head,
    the announcement and the COMMIT in a second, so the head lock is held for little more
    than one round trip.
    """
    keys = list({delivery.event_key for delivery in batch})
    head_read = await conn.execute(HEAD_FOR_UPDATE)
    # The server runs this after the lock is ours, and in READ COMMITTED a statement sees
    # every commit before it began: every earlier appender's rows.
    seen_read = await conn.execute(FIRST_SEQS, (keys,))
    head = await head_read.fetchone()
    assert head is not None, "log_head holds exactly one row (created with the schema)"
    # seq > 0 above: a row slipped in below the chain must not make a delivery a repeat.
    first_seen = {key: int(seq) for key, seq in await seen_read.fetchall() if seq is not None}
    rows, results = number_batch(int(head[0]), str(head[1]), batch, first_seen)
    if not rows:
        return results
    seq, previous = results[-1].seq, rows[-1][-1]
    # NOTIFY is delivered at commit, so no process hears of rows it cannot see yet.
    await conn.execute(INSERT_ROWS, as_columns(rows))
    await conn.execute("UPDATE log_head SET seq = %s, row_hash = %s", (seq, previous))
    await conn.execute("SELECT pg_notify(%s, %s)", (LOG_CHANNEL, str(seq)))
    return results

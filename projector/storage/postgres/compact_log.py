"""Schema version 3: the log's rows in compact stored forms (`projector.storage.compact`)."""

from __future__ import annotations

from projector.storage.compact import compact_headers, headers_as_bytes
from projector.storage.port import LogSchemaError
from projector.storage.postgres.connect import Connection

# The log's table at version 3: the hex digests as their 32 bytes, the headers compact.
_CREATE_COMPACT_LOG = """
CREATE TABLE deliveries_v3 (
    seq bigint NOT NULL CHECK (seq > 0),
    received_at text COLLATE "C" NOT NULL,
    environment text COLLATE "C" NOT NULL,
    key_id text COLLATE "C" NOT NULL,
    signed_as text COLLATE "C" NOT NULL,
    headers bytea NOT NULL,
    body bytea NOT NULL,
    event text COLLATE "C",
    kind text COLLATE "C",
    linked_account_id text COLLATE "C",
    slug text COLLATE "C",
    instance_id text COLLATE "C",
    event_key bytea NOT NULL CHECK (length(event_key) = 32),
    flags text COLLATE "C" NOT NULL,
    duplicate_of bigint,
    row_hash bytea NOT NULL CHECK (length(row_hash) = 32)
)
"""
# Built once the rows are in (a sort each, cheaper than keeping them up to date row by row).
_INDEXES_AND_GUARDS = """
ALTER TABLE deliveries ADD CONSTRAINT deliveries_pkey PRIMARY KEY (seq);
CREATE INDEX deliveries_by_key_prefix ON deliveries (substring(event_key FROM 1 FOR 8));
CREATE INDEX deliveries_by_account ON deliveries (environment, linked_account_id, seq);
CREATE INDEX deliveries_by_event ON deliveries (environment, event, seq);
CREATE INDEX deliveries_by_instance ON deliveries (environment, instance_id, seq)
    WHERE instance_id IS NOT NULL;
CREATE INDEX deliveries_flagged ON deliveries (environment, seq) WHERE flags <> '[]';
CREATE TRIGGER deliveries_no_update_or_delete BEFORE UPDATE OR DELETE ON deliveries
    FOR EACH ROW EXECUTE FUNCTION deliveries_append_only();
CREATE TRIGGER deliveries_no_truncate BEFORE TRUNCATE ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_append_only()
"""
_COPY_ROWS = """
INSERT INTO deliveries_v3 SELECT d.seq, d.received_at, d.environment, d.key_id, d.signed_as,
    h.headers, d.body, d.event, d.kind, d.linked_account_id, d.slug, d.instance_id,
    decode(d.event_key, 'hex'), d.flags, d.duplicate_of, decode(d.row_hash, 'hex')
FROM deliveries AS d JOIN compact_headers AS h ON h.seq = d.seq ORDER BY d.seq
"""
CHUNK = 5000


async def compact_log(conn: Connection) -> None:
    """Copy every row into a table of compact stored forms, then swap it in (one transaction).

    Each row reads back as the same logical row: the chain and its head hash are unchanged.
    The old table's files go when the transaction commits: no VACUUM is needed.
    """
    cur = await conn.execute(
        "SELECT seq FROM deliveries WHERE event_key !~ '^[0-9a-f]{64}$'"
        " OR row_hash !~ '^[0-9a-f]{64}$' ORDER BY seq LIMIT 1"
    )
    odd = await cur.fetchone()
    if odd is not None:
        raise LogSchemaError(
            f"the event log's row with seq {odd[0]} has an event_key or row_hash that is not a "
            "lowercase SHA-256 hex digest, so schema version 3 cannot store it as 32 bytes: "
            "run `projector verify`, and restore the log from a backup"
        )
    # The headers' compact forms are made here, row by row, each checked to convert back.
    await conn.execute(
        "CREATE TEMPORARY TABLE compact_headers (seq bigint PRIMARY KEY, headers bytea NOT NULL)"
        " ON COMMIT DROP"
    )
    after = 0
    while True:
        cur = await conn.execute(
            "SELECT seq, headers FROM deliveries WHERE seq > %s ORDER BY seq LIMIT %s",
            (after, CHUNK),
        )
        rows = await cur.fetchall()
        if not rows:
            break
        await conn.execute(
            "INSERT INTO compact_headers SELECT * FROM unnest(%s::bigint[], %s::bytea[])",
            (
                [seq for seq, _ in rows],
                [headers_as_bytes(compact_headers(text)) for _, text in rows],
            ),
        )
        after = rows[-1][0]
    await conn.execute(_CREATE_COMPACT_LOG)
    await conn.execute(_COPY_ROWS)
    # Dropping a table fires no trigger; its indexes and triggers go with it and are made
    # anew on the new table before this transaction commits.
    await conn.execute("DROP TABLE deliveries")
    await conn.execute("ALTER TABLE deliveries_v3 RENAME TO deliveries")
    for statement in _INDEXES_AND_GUARDS.split(";\n"):
        await conn.execute(statement)

"""The PostgreSQL schema: the log, its head, the bookkeeping; created and migrated once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from projector.integrity import GENESIS_HASH
from projector.readmodels import READ_MODELS, ReadModel
from projector.storage.port import LogSchemaError
from projector.storage.postgres.compact_log import compact_log
from projector.storage.postgres.connect import Connection

SCHEMA_VERSION = 3
# Held (per transaction) by whoever creates or migrates the schema: processes starting at
# once take turns, and each re-reads the version once it holds the lock.
MIGRATION_LOCK = 0x726566_6F6C6401  # "refold" 1

# The same table and column names as SQLite's, so the shared read queries run on both; and
# the same order of text: "C" compares bytes, as SQLite does, whatever the server's locale,
# so ORDER BY and the API's cursors page alike on both engines.
_CREATE_LOG = f"""
CREATE TABLE deliveries (
    seq bigint PRIMARY KEY CHECK (seq > 0),
    received_at text COLLATE "C" NOT NULL,
    environment text COLLATE "C" NOT NULL,
    key_id text COLLATE "C" NOT NULL,
    signed_as text COLLATE "C" NOT NULL,
    headers text COLLATE "C" NOT NULL,
    body bytea NOT NULL,
    event text COLLATE "C",
    kind text COLLATE "C",
    linked_account_id text COLLATE "C",
    slug text COLLATE "C",
    instance_id text COLLATE "C",
    event_key text COLLATE "C" NOT NULL,
    flags text COLLATE "C" NOT NULL,
    duplicate_of bigint,
    row_hash text COLLATE "C" NOT NULL CHECK (length(row_hash) = 64)
);
CREATE INDEX deliveries_by_event_key ON deliveries (event_key, seq);
CREATE INDEX deliveries_by_account ON deliveries (environment, linked_account_id, seq);
CREATE INDEX deliveries_by_event ON deliveries (environment, event, seq);
CREATE INDEX deliveries_by_instance ON deliveries (environment, instance_id, seq)
    WHERE instance_id IS NOT NULL;
CREATE INDEX deliveries_flagged ON deliveries (environment, seq) WHERE flags <> '[]';
CREATE FUNCTION deliveries_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'event log is append-only: % refused', TG_OP;
END $$;
CREATE TRIGGER deliveries_no_update_or_delete BEFORE UPDATE OR DELETE ON deliveries
    FOR EACH ROW EXECUTE FUNCTION deliveries_append_only();
CREATE TRIGGER deliveries_no_truncate BEFORE TRUNCATE ON deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION deliveries_append_only();
-- Exactly one row: the last seq and its hash. Every append locks it first, so appends from
-- every process commit one at a time, in seq order, without gaps.
CREATE TABLE log_head (
    one_row boolean PRIMARY KEY DEFAULT true CHECK (one_row),
    seq bigint NOT NULL,
    row_hash text NOT NULL
);
INSERT INTO log_head (seq, row_hash) VALUES (0, '{GENESIS_HASH}');
CREATE TABLE projections (
    name text PRIMARY KEY, version integer NOT NULL, position bigint NOT NULL,
    generation bigint NOT NULL
);
CREATE TABLE projection_errors (
    name text NOT NULL, generation bigint NOT NULL, seq bigint NOT NULL, error text NOT NULL,
    PRIMARY KEY (name, generation, seq)
);
CREATE TABLE rebuild_claims (generation bigint PRIMARY KEY);
CREATE TABLE rebuilds (generation bigint PRIMARY KEY, finished_at text NOT NULL);
CREATE TABLE projector_lease (
    name text PRIMARY KEY, owner text NOT NULL, epoch bigint NOT NULL,
    lease_until timestamptz NOT NULL
);
CREATE TABLE projector_schema (version integer NOT NULL);
INSERT INTO projector_schema (version) VALUES (0)
"""


async def _create_log(conn: Connection) -> None:
    await conn.execute(_CREATE_LOG)


# Version 2: the alert projector's checkpoint, outbox and states (projector.alerting); empty
# until alerting is first enabled, and never touched by a rebuild.
_CREATE_ALERTS = """
CREATE TABLE alert_checkpoint (
    one_row integer PRIMARY KEY CHECK (one_row = 1), position bigint NOT NULL,
    quiet_until bigint NOT NULL, fold_versions text NOT NULL
);
CREATE TABLE alert_outbox (
    seq bigint PRIMARY KEY, kind text COLLATE "C" NOT NULL, fields text NOT NULL,
    status text COLLATE "C" NOT NULL, attempts integer NOT NULL,
    next_attempt_at double precision NOT NULL, sent_at double precision,
    failed_at double precision, last_error text
);
CREATE INDEX alert_outbox_by_status ON alert_outbox (status, seq);
CREATE INDEX alert_outbox_by_sent_at ON alert_outbox (sent_at) WHERE sent_at IS NOT NULL
"""


async def _create_alerts(conn: Connection) -> None:
    await conn.execute(_CREATE_ALERTS)
    for model in READ_MODELS:
        columns = ", ".join(f'{c} text COLLATE "C"' for c in model.columns)
        await conn.execute(
            f"CREATE TABLE alert_{model.table} ({columns},"
            f" PRIMARY KEY ({', '.join(model.key_columns)}))"
        )


# Each entry migrates the schema from version N to N+1; `migrate` applies the missing ones.
MIGRATIONS: tuple[Callable[[Connection], Awaitable[None]], ...] = (
    _create_log,
    _create_alerts,
    compact_log,
)


def too_new(version: int) -> LogSchemaError:
    return LogSchemaError(
        f"the database has schema version {version}, but this refold-projector knows only up "
        f"to {SCHEMA_VERSION}: upgrade refold-projector before running it on this database"
    )


async def schema_version(conn: Connection) -> int:
    """The schema version of the database, 0 when it holds no refold-projector schema."""
    cur = await conn.execute("SELECT to_regclass('projector_schema') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0
    cur = await conn.execute("SELECT version FROM projector_schema")
    row = await cur.fetchone()
    return 0 if row is None else int(row[0])


async def migrate(conn: Connection) -> int:
    """Create or bring the schema up to date; refuse a database newer than this code."""
    async with conn.transaction():
        # DDL is transactional here: a process that dies half-way leaves nothing behind.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        version = await schema_version(conn)  # read under the lock: others may have migrated
        if version > SCHEMA_VERSION:
            raise too_new(version)
        try:
            for step in MIGRATIONS[version:]:
                await step(conn)
        except (
            psycopg.errors.DuplicateTable,
            psycopg.errors.DuplicateFunction,
            psycopg.errors.DuplicateObject,
        ) as exc:
            raise LogSchemaError(
                f"the database already holds tables of another application ({exc}); give "
                "refold-projector a database of its own: CREATE DATABASE, and point "
                "PROJECTOR_DB at it"
            ) from None
        if version < SCHEMA_VERSION:
            await conn.execute("UPDATE projector_schema SET version = %s", (SCHEMA_VERSION,))
    return SCHEMA_VERSION


async def check_version(conn: Connection) -> None:
    """Refuse, without writing, a database not exactly at this code's schema version."""
    version = await schema_version(conn)
    if version > SCHEMA_VERSION:
        raise too_new(version)
    if version < SCHEMA_VERSION:
        raise LogSchemaError(
            f"the database has schema version {version}, older than this refold-projector's "
            f"{SCHEMA_VERSION}: start `projector serve` once to create or upgrade it, then try "
            "again"
        )


async def stale_projections(conn: Connection) -> list[str]:
    """The projections whose version changed, or that were never built."""
    cur = await conn.execute("SELECT name, version FROM projections")
    versions: dict[str, int] = {name: int(v) for name, v in await cur.fetchall()}
    return [m.name for m in READ_MODELS if versions.get(m.name) != m.version]


def create_table_sql(model: ReadModel[Any, Any], table: str, generation: int) -> str:
    """`model`'s table as `table`: every column text, keyed by the model's key."""
    columns = ", ".join(f'{c} text COLLATE "C"' for c in model.columns)
    key = ", ".join(model.key_columns)
    # The key constraint is named for the generation: its index keeps the name when the
    # table is renamed, and the next rebuild's table must not collide with it.
    return (
        f"CREATE TABLE {table} ({columns},"
        f" CONSTRAINT {model.table}_key_g{generation} PRIMARY KEY ({key}))"
    )


def create_indexes_sql(model: ReadModel[Any, Any], table: str, generation: int) -> list[str]:
    """The query indexes of `table`, named for the generation (names outlive a rename)."""
    return [
        f"CREATE INDEX {model.table}_{suffix}_g{generation} ON {table} ({columns})"
        for suffix, columns in model.indexes
    ]

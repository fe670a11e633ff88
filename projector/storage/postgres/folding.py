"""Folding deliveries into read-model tables on PostgreSQL: read the log, load, fold, upsert."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import structlog

from projector.readmodels import READ_MODELS, Changes, FoldError, ReadModel, read_changes
from projector.storage.postgres.connect import Connection
from projector.storage.rows import LOGGED_COLUMNS, LoggedDelivery, logged_deliveries

logger = structlog.get_logger("projector.storage.postgres.folding")


async def read_after(conn: Connection, after: int, limit: int) -> list[LoggedDelivery]:
    """Up to `limit` deliveries with seq > `after` (and >= 1), in log order, gap-free.

    Raises LogNotIntact at a missing seq, as the SQLite log does: nothing past a gap is folded.
    """
    start = max(after, 0)
    cur = await conn.execute(
        f"SELECT {LOGGED_COLUMNS} FROM deliveries WHERE seq > %s ORDER BY seq LIMIT %s",
        (start, limit),
    )
    return logged_deliveries(await cur.fetchall(), start)


async def load_states(
    conn: Connection, model: ReadModel[Any, Any], table: str, keys: set[tuple[str, ...]]
) -> dict[Hashable, Any]:
    """The stored states of `keys`, in one query (the keys travel as one array per column)."""
    if not keys:
        return {}
    key = ", ".join(model.key_columns)
    arrays = ", ".join(["%s::text[]"] * len(model.key_columns))
    ordered = list(keys)
    cur = await conn.execute(
        f"SELECT {', '.join(model.columns)} FROM {table}"
        f" WHERE ({key}) IN (SELECT * FROM unnest({arrays}))",
        [list(column) for column in zip(*ordered, strict=True)],
    )
    positions = [model.columns.index(c) for c in model.key_columns]
    return {
        tuple(row[i] for i in positions): model.from_row(tuple(row)) for row in await cur.fetchall()
    }


async def save_states(
    conn: Connection, model: ReadModel[Any, Any], table: str, states: Sequence[Any]
) -> None:
    """Insert or replace `states` in `table`, in one statement."""
    if not states:
        return
    rows = [model.to_row(state) for state in states]
    arrays = ", ".join(["%s::text[]"] * len(model.columns))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in model.columns if c not in model.key_columns)
    await conn.execute(
        f"INSERT INTO {table} ({', '.join(model.columns)}) SELECT * FROM unnest({arrays})"
        f" ON CONFLICT ({', '.join(model.key_columns)}) DO UPDATE SET {updates}",
        [list(column) for column in zip(*rows, strict=True)],
    )


async def fold_changes(
    conn: Connection,
    model: ReadModel[Any, Any],
    table: str,
    read: tuple[Changes, list[FoldError]],
    after: int = 0,
) -> list[FoldError]:
    """Fold into `table` the changes of this model's kind past `after`; returns the errors."""
    mine, parse_errors = model.changes_past(read, after)
    states = await load_states(conn, model, table, model.keys_of(mine))
    dirty, errors = model.fold_into(states, mine)
    await save_states(conn, model, table, list(dirty.values()))
    return parse_errors + errors


async def record_errors(
    conn: Connection, name: str, generation: int, errors: Sequence[FoldError]
) -> None:
    """Keep the events a fold raised on, for GET /v1/projections/{name}/errors."""
    if not errors:
        return
    for error in errors:
        logger.error("fold_failed", projection=name, seq=error.seq, error=error.error)
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO projection_errors (name, generation, seq, error) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (name, generation, seq) DO UPDATE SET error = EXCLUDED.error",
            [(name, generation, e.seq, e.error) for e in errors],
        )


async def fold_range(
    conn: Connection,
    positions: Mapping[str, tuple[int, int]],
    deliveries: Sequence[LoggedDelivery],
    suffix: str = "",
) -> list[str]:
    """Fold `deliveries` into each model's table (+`suffix`) past its position.

    `positions` maps each projection to (position, generation). Returns the projections
    that moved; the caller moves their positions in the same transaction.
    """
    if not deliveries:
        return []
    end = deliveries[-1].seq
    read = read_changes(deliveries)
    moved = []
    for model in READ_MODELS:
        position, generation = positions[model.name]
        if position >= end:
            continue
        errors = await fold_changes(conn, model, model.table + suffix, read, after=position)
        await record_errors(conn, model.name, generation, errors)
        moved.append(model.name)
    return moved

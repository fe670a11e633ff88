"""The reads behind readiness, /metrics, /v1/stats and the change stream, for both engines."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from projector.storage.compact import instant_of
from projector.storage.port import ChangedRow, ProjectionLag, StorageStatus

# Runs one statement written with `?` placeholders on an adapter's connections.
Fetch = Callable[[str, Sequence[Any]], Awaitable[list[tuple[Any, ...]]]]

# One statement, so one snapshot: head and positions agree (no read transaction spans two
# statements on a shared connection). Every part is an index lookup: the head and the oldest
# unfolded delivery by primary key, the errors by their own key.
STATUS_QUERY = """
WITH head AS (SELECT coalesce(max(seq), 0) AS seq FROM deliveries)
SELECT head.seq, p.name, p.position,
    (SELECT count(*) FROM projection_errors e
     WHERE e.name = p.name AND e.generation = p.generation),
    CASE WHEN p.position < head.seq THEN
        (SELECT received_at FROM deliveries d WHERE d.seq > p.position ORDER BY d.seq LIMIT 1)
    END,
    (SELECT finished_at FROM rebuilds r WHERE r.generation = p.generation)
FROM head LEFT JOIN projections p ON true ORDER BY p.name
"""


class StatusReads:
    """Where the log and the projections stand: head, positions, lag, what changed."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch

    async def _rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return await self._fetch(sql, params)

    async def storage_status(self, now: datetime) -> StorageStatus:
        """The log head and each projection's position, errors and lag, in one statement."""
        rows = await self._rows(STATUS_QUERY)
        projections = []
        for _head, name, position, errors, oldest, rebuilt_at in rows:
            if name is None:  # no projection yet
                continue
            lag = 0.0
            if oldest is not None:
                oldest_at = datetime.fromisoformat(instant_of(oldest))
                lag = max(0.0, (now - oldest_at).total_seconds())
            projections.append(ProjectionLag(name, position, errors, lag, rebuilt_at))
        return StorageStatus(int(rows[0][0]), tuple(projections))

    async def folded_position(self) -> int:
        """The position every projection has reached (the lowest)."""
        rows = await self._rows("SELECT coalesce(min(position), 0) FROM projections")
        return int(rows[0][0])

    async def positions(self) -> tuple[int, int]:
        """The projections' common position and the log head, in one snapshot."""
        rows = await self._rows(
            "SELECT (SELECT coalesce(min(position), 0) FROM projections),"
            " (SELECT coalesce(max(seq), 0) FROM deliveries)"
        )
        return int(rows[0][0]), int(rows[0][1])

    async def changed_rows(
        self, environment: str, account: str | None, after: int, until: int, limit: int
    ) -> list[ChangedRow]:
        """Clean deliveries in (after, until], their kind and key columns, not their bodies."""
        where = ["seq > ?", "seq <= ?", "environment = ?", "flags = '[]'", "kind IS NOT NULL"]
        params: list[int | str] = [after, until, environment]
        if account is not None:
            where.append("linked_account_id = ?")
            params.append(account)
        rows = await self._rows(
            "SELECT seq, kind, linked_account_id, instance_id FROM deliveries"
            f" WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            *params,
            limit,
        )
        return [ChangedRow(*row) for row in rows]

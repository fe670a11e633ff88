"""Read-only connections for the API: each answer's statement runs on one of them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite


class ReaderPool:
    """A few read-only aiosqlite connections; each is its own thread, so reads run in parallel."""

    def __init__(self, path: Path, size: int = 2) -> None:
        self._path = path
        self._size = size
        self._all: list[aiosqlite.Connection] = []
        self._turn = 0

    async def open(self) -> None:
        """Open the connections (the writer must have created the database first)."""
        for _ in range(self._size):
            conn = await aiosqlite.connect(f"file:{self._path}?mode=ro", uri=True)
            await conn.execute("PRAGMA busy_timeout=5000")
            self._all.append(conn)

    async def close(self) -> None:
        """Close every connection."""
        for conn in self._all:
            await conn.close()
        self._all.clear()

    async def __aenter__(self) -> ReaderPool:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[aiosqlite.Connection]:
        """A connection for one answer, shared: the connections take turns.

        Not lent out one answer at a time: a lent connection would sit idle from its last
        row until the busy event loop got back to its answer. Shared, its thread runs the
        next answer's statement straight away. Each statement is its own snapshot (no read
        transaction spans two), lent or shared, so sharing changes nothing an answer sees.
        """
        if not self._all:
            raise RuntimeError("the reader pool is not open")
        self._turn = (self._turn + 1) % len(self._all)
        yield self._all[self._turn]

    async def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """All rows of one statement, on one of the shared connections."""
        async with self.connection() as conn:
            return await fetch_rows(conn, sql, *params)


async def fetch_rows(conn: aiosqlite.Connection, sql: str, *params: Any) -> list[Any]:
    """All rows of one statement, fetched in one trip to the connection's thread."""
    # One trip to the connection's thread (execute, fetch and close there), not three: each
    # trip costs the event loop a future and a wake-up, and the request ~80 us of latency.
    return list(await conn.execute_fetchall(sql, params))

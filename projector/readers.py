"""Read-only connections for the API, and banner reads that share one query."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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


async def fetch_rows(conn: aiosqlite.Connection, sql: str, *params: Any) -> list[Any]:
    """All rows of one statement, fetched in one trip to the connection's thread."""
    # One trip to the connection's thread (execute, fetch and close there), not three: each
    # trip costs the event loop a future and a wake-up, and the request ~80 us of latency.
    return list(await conn.execute_fetchall(sql, params))


# Accounts per shared query: two bound values each, far below SQLite's 32,766.
MAX_SHARED = 500
Waiting = dict[tuple[str, str], list[asyncio.Future[list[Any]]]]


class AccountReads:
    """Banner reads that arrive together share one query: one trip to a reader thread.

    Each trip costs the busy event loop a future, a cross-thread wake-up and a GIL handoff;
    under load a dozen banner reads are often waiting at once, and pay that once.
    """

    def __init__(self, readers: ReaderPool) -> None:
        self._readers = readers
        self._waiting: Waiting = {}
        self._flush_due = False
        self._loading: set[asyncio.Task[None]] = set()  # held: the loop keeps weak refs only

    async def rows(self, environment: str, account: str) -> list[Any]:
        """The account's connection rows, read in a query shared with reads waiting too."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._waiting.setdefault((environment, account), []).append(future)
        if not self._flush_due:
            # After this loop turn: every request that became ready with this one joins in.
            self._flush_due = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_due = False
        waiting, self._waiting = self._waiting, {}
        keys = list(waiting)
        for start in range(0, len(keys), MAX_SHARED):
            part = {key: waiting[key] for key in keys[start : start + MAX_SHARED]}
            task = asyncio.get_running_loop().create_task(self._load(part))
            self._loading.add(task)
            task.add_done_callback(self._loading.discard)

    async def _load(self, waiting: Waiting) -> None:
        try:
            pairs = ", ".join(["(?, ?)"] * len(waiting))
            async with self._readers.connection() as conn:
                rows = await fetch_rows(
                    conn,
                    "SELECT c.environment, c.linked_account_id, c.slug, c.status, c.status_since,"
                    " c.type, c.first_seen, c.last_seen"
                    f" FROM (VALUES {pairs}) AS k CROSS JOIN connections AS c"
                    " ON c.environment = k.column1 AND c.linked_account_id = k.column2"
                    " ORDER BY c.environment, c.linked_account_id, c.slug",
                    *[value for key in waiting for value in key],
                )
        except BaseException as exc:  # no read may be left waiting: each gets the error
            _fail(waiting, exc)
            if not isinstance(exc, Exception):
                raise  # cancelled (shutdown): its readers were cancelled above
            return
        found: dict[tuple[str, str], list[Any]] = {}
        for environment, account, *row in rows:
            found.setdefault((environment, account), []).append(tuple(row))
        for key, futures in waiting.items():
            for future in futures:
                if not future.done():
                    future.set_result(found.get(key, []))


def _fail(waiting: Waiting, error: BaseException) -> None:
    for futures in waiting.values():
        for future in futures:
            if future.done():
                continue
            if isinstance(error, Exception):
                future.set_exception(error)
            else:
                future.cancel()

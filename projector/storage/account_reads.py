"""Banner reads that arrive together share one query, on either engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Fetch = Callable[[str, Sequence[Any]], Awaitable[list[tuple[Any, ...]]]]

# Accounts per shared query: two bound values each, far below SQLite's 32,766.
MAX_SHARED = 500
Waiting = dict[tuple[str, str], list[asyncio.Future[list[Any]]]]


class AccountReads:
    """Banner reads that arrive together share one query: one trip to the database.

    Each trip costs the busy event loop a future and a wake-up (on SQLite, a cross-thread
    one and a GIL handoff); under load a dozen banner reads often wait at once, and pay once.
    """

    def __init__(self, fetch: Fetch, values_join: str) -> None:
        self._fetch = fetch
        self._values_join = values_join  # the dialect's join of a VALUES list to a table
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
            rows = await self._fetch(
                "SELECT c.environment, c.linked_account_id, c.slug, c.status, c.status_since,"
                " c.type, c.first_seen, c.last_seen"
                f" FROM (VALUES {pairs}) AS k {self._values_join} connections AS c"
                " ON c.environment = k.column1 AND c.linked_account_id = k.column2"
                " ORDER BY c.environment, c.linked_account_id, c.slug",
                [value for key in waiting for value in key],
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

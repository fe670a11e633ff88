"""`projector serve` processes sharing one PostgreSQL database, and what tests ask of them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from projector.storage.location import PostgresUrl
from tests.postgres_support import query
from tests.support import AUTH, Service

READ_PATHS = ("/v1/projections", "/v1/connections?environment=live", "/v1/events?limit=5")


def pg_service(url: PostgresUrl, workdir: Path) -> Service:
    """A service (not started) on the database at `url`; its log file goes in `workdir`."""
    return Service(workdir / "postgres.sqlite3", extra_env={"PROJECTOR_DB": url.url})


async def start_all(services: Iterable[Service]) -> None:
    """Start each service in turn (each waits for its /healthz), off the event loop."""
    for service in services:
        await asyncio.to_thread(service.start)


async def lease_holder(url: PostgresUrl) -> tuple[int, int] | None:
    """The pid and epoch of the process holding a live projector lease, or None."""
    rows = await query(
        url, "SELECT owner, epoch FROM projector_lease WHERE lease_until > now() LIMIT 1"
    )
    if not rows:
        return None
    owner, epoch = rows[0]
    return int(str(owner).split(":")[1]), int(epoch)  # owner is host:pid:nonce


async def wait_for_holder(url: PostgresUrl, pids: set[int], seconds: float = 30) -> int | None:
    """The pid among `pids` that holds the lease, waiting for one (bounded); None if none."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        holder = await lease_holder(url)
        if holder is not None and holder[0] in pids:
            return holder[0]
        await asyncio.sleep(0.1)
    return None


async def projections(base: str) -> dict[str, Any] | None:
    """GET /v1/projections, or None if it did not answer 200."""
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"{base}/v1/projections", headers=AUTH) as answer,
        ):
            return dict(await answer.json()) if answer.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


async def wait_folded(base: str, seq: int | None = None, seconds: float = 30) -> bool:
    """Whether every projection reaches `seq` (default: the log head) within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = await projections(base)
        if state is not None:
            target = state["log_head"] if seq is None else seq
            if all(p["position"] >= target for p in state["projections"]):
                return True
        await asyncio.sleep(0.05)
    return False


@dataclass
class Reader:
    """Polls a few read endpoints of `base` until stopped; counts each answer's status."""

    base: str
    statuses: Counter[str] = field(default_factory=Counter)
    last_ok: float = 0.0  # time.monotonic() of the last 200
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self, max_seconds: float = 300) -> Reader:
        self._task = asyncio.create_task(self._run(max_seconds), name="reader")
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def answered_since(self, moment: float, seconds: float = 30) -> bool:
        """Whether a read answers 200 after `moment`, waiting up to `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.last_ok > moment:
                return True
            await asyncio.sleep(0.05)
        return self.last_ok > moment

    async def _run(self, max_seconds: float) -> None:
        deadline = time.monotonic() + max_seconds
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not self._stop.is_set() and time.monotonic() < deadline:
                for path in READ_PATHS:
                    try:
                        async with http.get(f"{self.base}{path}", headers=AUTH) as answer:
                            await answer.read()
                            self.statuses[str(answer.status)] += 1
                            if answer.status == 200:
                                self.last_ok = time.monotonic()
                    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                        self.statuses[type(exc).__name__] += 1
                await asyncio.sleep(0.05)

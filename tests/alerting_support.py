"""Alerting test support: a real alert receiver on 127.0.0.1, and bounded waits for it."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from projector import alerts
from projector.events import parse_change
from projector.readmodels import READ_MODELS

# The path is what a Slack webhook keeps secret: no log line may show it.
SECRET_PATH = "/services/T000SECRET/B000SECRET/xoxsecrettoken"


@dataclass
class Receiver:
    """Records every alert POSTed to it; answers `failures` 500s first, then 200s."""

    url: str = ""
    failures: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    answered: list[tuple[dict[str, Any], int]] = field(default_factory=list)
    # While clear, every request waits for it (a slow receiver); set by default.
    open: asyncio.Event = field(default_factory=asyncio.Event)

    def delivered(self) -> list[dict[str, Any]]:
        """The bodies answered 200, in the order they came."""
        return [body for body, status in self.answered if status == 200]

    def alerted(self) -> list[tuple[str, int]]:
        """(kind, seq) of every single alert delivered, repeats kept (summaries left out)."""
        return [
            (body["alert"]["kind"], body["alert"]["seq"])
            for body in self.delivered()
            if body["alert"]["kind"] != alerts.SUMMARY
        ]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        await self.open.wait()
        status = 500 if self.failures > 0 else 200
        self.failures -= 1
        self.answered.append((body, status))
        return web.Response(status=status, text="ok" if status == 200 else "receiver down")


@asynccontextmanager
async def receiving(failures: int = 0) -> AsyncIterator[Receiver]:
    """A Receiver listening on a free port of 127.0.0.1 at SECRET_PATH, until the end."""
    receiver = Receiver(failures=failures)
    receiver.open.set()
    app = web.Application()
    app.router.add_post(SECRET_PATH, receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    receiver.url = f"http://127.0.0.1:{port}{SECRET_PATH}"
    try:
        yield receiver
    finally:
        receiver.open.set()
        await runner.cleanup()


async def until(check: Callable[[], bool], seconds: float = 20.0, what: str = "") -> None:
    """Wait (bounded) until `check()` holds; fail naming `what` if it never does."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        await asyncio.sleep(0.02)


def expected_alerts(db: Path) -> list[tuple[str, int]]:
    """(kind, seq) of every alert the whole log raises, folded from nothing (pure)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT seq, environment, body FROM deliveries ORDER BY seq").fetchall()
    finally:
        conn.close()
    changes = [(seq, parse_change(body, env)) for seq, env, body in rows]
    found: list[tuple[str, int]] = []
    for model in READ_MODELS:
        mine = [(seq, c) for seq, c in changes if isinstance(c, model.change_type)]
        _, raised = alerts.derive(model, {}, mine)
        found += [(alert.kind, alert.seq) for alert in raised]
    return sorted(found, key=lambda kind_seq: kind_seq[1])

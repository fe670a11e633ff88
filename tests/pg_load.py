"""A bounded load of signed deliveries spread over several `projector serve` processes.

Delivery `i` is a pure function of `i`; every tenth repeats the body sent five before it (as
Refold's retries do), so with two processes the repeat reaches the other one. Each number
is sent once, never retried: what the log must hold is read off the answers alone.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp

from projector.signature import SIGNATURE_HEADER, sign_body
from tests.crash_load import Deliveries
from tests.support import KEY_BY_ENVIRONMENT

# Longer than the service's own bound on a commit (10 s): a request still open past this hung.
REQUEST_SECONDS = 20.0
# Few accounts, so folds update the same rows often; one second apart, so no two numbers
# share a body however the choices fall.
delivery = Deliveries(datetime(2026, 7, 1, tzinfo=UTC), accounts=60, runs=400, per_second=1)


@dataclass(frozen=True)
class Outcome:
    """What one POST got: an HTTP answer (status), or none (error names the exception)."""

    number: int
    target: str
    status: int | None
    error: str | None
    retry_after: str | None
    seq: int | None
    sent_at: float  # time.monotonic()
    seconds: float

    @property
    def body(self) -> bytes:
        return delivery(self.number)[1]


@dataclass
class Load:
    """Workers posting deliveries 0, 1, 2, ... round-robin to `targets` (changeable live)."""

    targets: list[str]
    concurrency: int = 16
    outcomes: list[Outcome] = field(default_factory=list)
    issued: int = 0  # numbers 0 .. issued-1 have been (or are being) sent
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self, max_seconds: float = 300) -> Load:
        """Start posting in the background; it stops by itself after `max_seconds`."""
        self._task = asyncio.create_task(self._run(max_seconds), name="load")
        return self

    async def stop(self) -> None:
        """Stop, letting requests in flight get their answers (each bounded)."""
        self._stop.set()
        if self._task is not None:
            await self._task

    def acked(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200]

    def statuses(self, since: float = 0.0) -> Counter[str]:
        """How many answers of each status (or exception) for requests sent after `since`."""
        return Counter(
            str(o.status) if o.status is not None else str(o.error)
            for o in self.outcomes
            if o.sent_at >= since
        )

    async def first_ack_after(self, moment: float, seconds: float = 30) -> Outcome | None:
        """The first delivery sent after `moment` and acknowledged, waiting (bounded) for it."""
        deadline = time.monotonic() + seconds
        while True:
            later = [o for o in self.acked() if o.sent_at > moment and o.seq is not None]
            if later or time.monotonic() > deadline:
                return min(later, key=lambda o: o.sent_at, default=None)
            await asyncio.sleep(0.05)

    async def wait_for_acks(self, more_than: int, seconds: float = 30) -> bool:
        """Wait (bounded) until more than `more_than` deliveries were acknowledged."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if len(self.acked()) > more_than:
                return True
            await asyncio.sleep(0.05)
        return False

    async def _run(self, max_seconds: float) -> None:
        deadline = time.monotonic() + max_seconds
        timeout = aiohttp.ClientTimeout(total=REQUEST_SECONDS)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

            async def worker() -> None:
                while not self._stop.is_set() and time.monotonic() < deadline:
                    if not self.targets:
                        await asyncio.sleep(0.05)
                        continue
                    number, self.issued = self.issued, self.issued + 1
                    outcome = await self._post(session, number)
                    self.outcomes.append(outcome)
                    if outcome.status != 200:  # a process or the database is down: no spin
                        await asyncio.sleep(0.02)

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    async def _post(self, session: aiohttp.ClientSession, number: int) -> Outcome:
        environment, body = delivery(number)
        target = self.targets[number % len(self.targets)]
        headers = {
            SIGNATURE_HEADER: sign_body(body, KEY_BY_ENVIRONMENT[environment].encode()),
            "Content-Type": "application/json",
        }
        sent_at = time.monotonic()
        status = seq = retry_after = error = None
        try:
            async with session.post(f"{target}/webhooks/refold", data=body, headers=headers) as a:
                status, retry_after = a.status, a.headers.get("Retry-After")
                text = await a.read()
            document = json.loads(text) if status == 200 else None
            seq = document.get("seq") if isinstance(document, dict) else None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = type(exc).__name__
        return Outcome(
            number, target, status, error, retry_after, seq, sent_at, time.monotonic() - sent_at
        )

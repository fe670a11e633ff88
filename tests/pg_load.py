"""A bounded load of signed deliveries spread over several `projector serve` processes.

Delivery `i` is a pure function of `i`; every tenth repeats the body sent five before it (as
Refold's retries do), so with two processes the repeat reaches the other one. Each number
is sent once, never retried: what the log must hold is read off the answers alone.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp

from projector.signature import SIGNATURE_HEADER, sign_body
from tests.support import KEY_BY_ENVIRONMENT

SLUGS = ("hubspot", "slack", "gmail", "salesforce")
CONNECTION_EVENTS = ("Connection Created", "Connection Deleted", "Connection Expired")
WORKFLOW_EVENTS = (
    ("Workflow Completed", "COMPLETED"),
    ("Workflow Errored", "ERRORED"),
    ("Workflow Stopped", "STOPPED"),
)
START = datetime(2026, 7, 1, tzinfo=UTC)
REPEAT_EVERY, REPEAT_DISTANCE = 10, 5
# Longer than the service's own bound on a commit (10 s): a request still open past this hung.
REQUEST_SECONDS = 20.0


def _first_body(i: int) -> tuple[str, bytes]:
    rng = random.Random(i)
    environment = "test" if i % 3 == 0 else "live"
    account = f"acct_{rng.randrange(60)}"  # few accounts: folds update the same rows often
    if rng.random() < 0.6:
        payload: dict[str, object] = {
            "linked_account_id": account,
            "org_id": "645270e37917442c4307297a",
            "environment": environment,
            "type": "General",
            "event": rng.choice(CONNECTION_EVENTS),
            "slug": rng.choice(SLUGS),
            # One second apart: no two numbers share a body, however the choices fall.
            "createdAt": format_datetime(START + timedelta(seconds=i), usegmt=True),
        }
    else:
        event, status = rng.choice(WORKFLOW_EVENTS)
        payload = {
            "linked_account_id": account,
            "instance_id": f"{rng.randrange(400):024x}",
            "workflow_id": "d09fe2930ddf3e1d94ed1f68",
            "event": event,
            "workflow_name": "Sync Deals",
            "status": status,
            "environment": environment,
            "attempt": i,
        }
    return environment, json.dumps(payload, separators=(",", ":")).encode()


def delivery(i: int) -> tuple[str, bytes]:
    """The environment and exact body of delivery number `i`."""
    if i % REPEAT_EVERY == REPEAT_EVERY - 1:
        return _first_body(i - REPEAT_DISTANCE)
    return _first_body(i)


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

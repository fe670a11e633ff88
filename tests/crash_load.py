"""The crash test's load: a separate process posting signed deliveries, recording each 200.

Run by `tests.crash_loop`; on its own: python -m tests.crash_load URL ACKS (stop: SIGTERM).
Delivery `i` is a pure function of `i`, so the checker can regenerate every body sent.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

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
# Every tenth delivery repeats the body sent five before it, as Refold's retries do.
REPEAT_EVERY, REPEAT_DISTANCE = 10, 5


@dataclass(frozen=True)
class Deliveries:
    """Delivery `i` as a pure function of `i`, so a checker can regenerate every body sent."""

    start: datetime
    accounts: int
    runs: int
    per_second: int  # deliveries sharing one createdAt second

    def _first_body(self, i: int) -> tuple[str, bytes]:
        rng = random.Random(i)
        environment = "test" if i % 3 == 0 else "live"
        account = f"acct_{rng.randrange(self.accounts)}"
        if rng.random() < 0.6:
            created = self.start + timedelta(seconds=i // self.per_second)
            payload: dict[str, object] = {
                "linked_account_id": account,
                "org_id": "645270e37917442c4307297a",
                "environment": environment,
                "type": "General",
                "event": rng.choice(CONNECTION_EVENTS),
                "slug": rng.choice(SLUGS),
                "createdAt": format_datetime(created, usegmt=True),
            }
        else:
            event, status = rng.choice(WORKFLOW_EVENTS)
            payload = {
                "linked_account_id": account,
                "instance_id": f"{rng.randrange(self.runs):024x}",
                "workflow_id": "d09fe2930ddf3e1d94ed1f68",
                "event": event,
                "workflow_name": "Sync Deals",
                "status": status,
                "environment": environment,
                "attempt": i,
            }
        return environment, json.dumps(payload, separators=(",", ":")).encode()

    def __call__(self, i: int) -> tuple[str, bytes]:
        """The environment and exact body of delivery number `i`."""
        if i % REPEAT_EVERY == REPEAT_EVERY - 1:
            return self._first_body(i - REPEAT_DISTANCE)
        return self._first_body(i)


# Two deliveries per second: same-second ties are common, as in real streams.
delivery = Deliveries(datetime(2026, 6, 1, tzinfo=UTC), accounts=300, runs=2000, per_second=2)


async def post_until_stopped(
    url: str, acks: Path, concurrency: int, max_seconds: float
) -> dict[str, object]:
    """Post deliveries 0, 1, 2, ... from `concurrency` workers until SIGTERM."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    numbers = itertools.count()
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + max_seconds
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        with acks.open("a") as ack_file:

            async def worker() -> None:
                while not stop.is_set() and time.monotonic() < deadline:
                    i = next(numbers)
                    environment, body = delivery(i)
                    key = KEY_BY_ENVIRONMENT[environment].encode()
                    headers = {
                        SIGNATURE_HEADER: sign_body(body, key),
                        "Content-Type": "application/json",
                    }
                    try:
                        async with session.post(url, data=body, headers=headers) as answer:
                            await answer.read()
                            outcome = str(answer.status)
                    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                        outcome = type(exc).__name__
                    outcomes[outcome] += 1
                    if outcome == "200":
                        # Flushed at once: the checker must see every 200 this process saw.
                        ack_file.write(f"{i}\n")
                        ack_file.flush()
                    else:  # the server is down or restarting: do not spin
                        await asyncio.sleep(0.02)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"attempted": next(numbers), "outcomes": dict(outcomes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("acks", type=Path, help="file to append the number of each 200 to")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=600, help="stop after this anyway")
    args = parser.parse_args(argv)
    summary = asyncio.run(
        post_until_stopped(args.url, args.acks, args.concurrency, args.max_seconds)
    )
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

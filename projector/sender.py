"""Sign and post delivery bodies, as Refold would: the demo loader and load tool."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp

from projector.config import SigningKey, normalise_environment
from projector.signature import SIGNATURE_HEADER, sign_body

# Refold retries a failed delivery up to 3 times; the sender does the same.
RETRIES = 3


@dataclass
class SendReport:
    """What happened to the bodies sent."""

    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    failed: list[str] = field(default_factory=list)


def environment_of(body: bytes, default: str) -> str:
    """The environment a body names (live/production/test), else `default`."""
    try:
        payload = json.loads(body)
    except ValueError:
        return default
    named = payload.get("environment") if isinstance(payload, dict) else None
    return (normalise_environment(named) if isinstance(named, str) else None) or default


def key_for(environment: str, keys: Sequence[SigningKey]) -> SigningKey:
    """The first configured key of `environment` (the newest, by convention)."""
    for key in keys:
        if key.environment == environment:
            return key
    raise LookupError(f"no signing key for environment {environment!r} in PROJECTOR_SIGNING_KEYS")


async def send_bodies(
    url: str,
    bodies: Iterable[bytes],
    keys: Sequence[SigningKey],
    default_environment: str,
    concurrency: int = 8,
    backoff: float = 0.5,
) -> SendReport:
    """POST each body signed with its environment's key; retry 503s with backoff."""
    report = SendReport()
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for line_number, body in enumerate(bodies, start=1):
        queue.put_nowait((line_number, body))
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def worker() -> None:
            while not queue.empty():
                line_number, body = queue.get_nowait()
                await _send_one(
                    session, url, line_number, body, keys, default_environment, backoff, report
                )

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return report


async def _send_one(
    session: aiohttp.ClientSession,
    url: str,
    line_number: int,
    body: bytes,
    keys: Sequence[SigningKey],
    default_environment: str,
    backoff: float,
    report: SendReport,
) -> None:
    key = key_for(environment_of(body, default_environment), keys)
    headers = {SIGNATURE_HEADER: sign_body(body, key.secret), "Content-Type": "application/json"}
    report.sent += 1
    for attempt in range(RETRIES + 1):
        try:
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.read()
                if response.status == 200:
                    report.accepted += 1
                    report.duplicates += bool(json.loads(answer).get("duplicate"))
                    return
                problem = f"line {line_number}: HTTP {response.status} {answer[:200]!r}"
                if response.status != 503:
                    break
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = f"line {line_number}: {type(exc).__name__}: {exc}"
        await asyncio.sleep(backoff * 2**attempt)
    report.failed.append(problem)

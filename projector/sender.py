"""Sign and post delivery bodies, as Refold would: the demo loader and load tool."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TextIO

import aiohttp

from projector.config import ConfigError, SigningKey, normalise_environment
from projector.signature import SIGNATURE_HEADER, sign_body

# Refold retries a failed delivery up to 3 times; the sender does the same.
RETRIES = 3
# Connecting (name lookup included) gets this long. A URL where nothing answers ends the
# whole send at the first failed connection: retrying each line could take minutes.
CONNECT_SECONDS = 4.0


@dataclass
class SendReport:
    """What happened to the bodies sent."""

    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    failed: list[str] = field(default_factory=list)
    # Why the send stopped early: no connection could be made to the URL.
    unreachable: str | None = None

    def progress(self) -> str:
        """One line on how far the send is."""
        return f"sent {self.sent}, accepted {self.accepted}, failed {len(self.failed)}"


class ShowsProgress(Protocol):
    """A report that can say, in one line, how far its work is."""

    def progress(self) -> str: ...


class TerminalProgress:
    """A report's progress line, rewritten in place on a terminal (`send`, `copy`)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.shown = False

    def __call__(self, report: ShowsProgress) -> None:
        self._stream.write(f"\r{report.progress()}")
        self._stream.flush()
        self.shown = True

    def end(self) -> None:
        """End the progress line, so what follows starts on a line of its own."""
        if self.shown:
            self._stream.write("\n")
            self._stream.flush()


def terminal_progress(stream: TextIO) -> TerminalProgress | None:
    """Progress for a person watching `stream`; None when it is not a terminal (a log)."""
    return TerminalProgress(stream) if stream.isatty() else None


@dataclass(frozen=True)
class _Signed:
    line_number: int
    body: bytes
    headers: dict[str, str]


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
    raise ConfigError(
        f"PROJECTOR_SIGNING_KEYS has no {environment} key, and the file has {environment} "
        f"lines; add one (e.g. {environment}:<its API key>) or leave those lines out"
    )


def _signed(bodies: Iterable[bytes], keys: Sequence[SigningKey], default: str) -> list[_Signed]:
    """Every body with its headers; a missing key is found before anything is sent."""
    signed = []
    for line_number, body in enumerate(bodies, start=1):
        key = key_for(environment_of(body, default), keys)
        headers = {
            SIGNATURE_HEADER: sign_body(body, key.secret),
            "Content-Type": "application/json",
        }
        signed.append(_Signed(line_number, body, headers))
    return signed


async def send_bodies(
    url: str,
    bodies: Iterable[bytes],
    keys: Sequence[SigningKey],
    default_environment: str,
    concurrency: int = 8,
    backoff: float = 0.5,
    progress: Callable[[SendReport], None] | None = None,
    progress_every: float = 1.0,
) -> SendReport:
    """POST each body signed with its environment's key; retry 503s with backoff.

    `progress`, if given, is called with the report every `progress_every` seconds.
    """
    report = SendReport()
    queue: asyncio.Queue[_Signed] = asyncio.Queue()
    for item in _signed(bodies, keys, default_environment):
        queue.put_nowait(item)
    workers = max(1, concurrency)
    timeout = aiohttp.ClientTimeout(total=30, connect=CONNECT_SECONDS)
    connector = aiohttp.TCPConnector(limit=workers)  # no request waits for a pooled connection
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            while report.unreachable is None and not queue.empty():
                await _send_one(session, url, queue.get_nowait(), backoff, report)

        ticker = (
            None
            if progress is None
            else asyncio.create_task(_tick(progress, progress_every, report))
        )
        try:
            await asyncio.gather(*(worker() for _ in range(workers)))
        finally:
            if ticker is not None:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
    return report


async def _tick(progress: Callable[[SendReport], None], every: float, report: SendReport) -> None:
    while True:
        await asyncio.sleep(every)
        progress(report)


async def _send_one(
    session: aiohttp.ClientSession, url: str, item: _Signed, backoff: float, report: SendReport
) -> None:
    report.sent += 1
    for attempt in range(RETRIES + 1):
        try:
            async with session.post(url, data=item.body, headers=item.headers) as response:
                answer = await response.read()
                if response.status == 200:
                    report.accepted += 1
                    report.duplicates += bool(json.loads(answer).get("duplicate"))
                    return
                problem = f"line {item.line_number}: HTTP {response.status} {answer[:200]!r}"
                if response.status != 503:
                    break
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            why = _connect_failure(exc)
            report.failed.append(f"line {item.line_number}: cannot connect: {why}")
            if report.unreachable is None:
                report.unreachable = f"cannot connect to {url} ({why})"
            return
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = f"line {item.line_number}: {type(exc).__name__}: {exc}"
        await asyncio.sleep(backoff * 2**attempt)
    report.failed.append(problem)


def _connect_failure(exc: aiohttp.ClientError) -> str:
    """Why a connection failed, in the system's words: `Connection refused`, not a repr."""
    cause = getattr(exc, "os_error", None)
    if not isinstance(cause, OSError):
        return str(exc) or type(exc).__name__
    # asyncio words a refusal "Connect call failed (...)"; a name lookup's errno is its own.
    code = cause.errno
    if not isinstance(cause, socket.gaierror) and code is not None and code in errno.errorcode:
        return os.strerror(code)
    return cause.strerror or str(exc)  # e.g. "Name or service not known"

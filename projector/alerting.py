"""The alert loop: derives alerts from the log into the outbox, and POSTs them to
PROJECTOR_ALERT_URL, off the request path. At least once: marked sent only after a 2xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from itertools import takewhile
from urllib.parse import urlsplit

import aiohttp
import structlog

from projector import alerts
from projector.config import Settings
from projector.metrics import Metrics
from projector.storage.port import AlertOutbox, FailedAttempt, Projector, Storage

logger = structlog.get_logger("projector.alerting")

# 6 attempts; with PROJECTOR_ALERT_RETRY_SECONDS=10 the retries wait 10, 20, 40, 80 and
# 160 s: about five minutes (plus each POST's time) before an alert is recorded as failed.
MAX_ATTEMPTS = 6
POST_TIMEOUT_SECONDS = 10.0
DERIVE_BATCH = 500
# Batches derived per step at most, so a long catch-up still lets due alerts go out.
DERIVE_BATCHES_PER_STEP = 20
# A flood summary names the count of all waiting alerts, up to this many.
PENDING_BATCH = 10_000
IDLE_SECONDS = 1.0
# After a wake-up, more commits gather this long: a busy log wakes the loop at every one.
MIN_STEP_SECONDS = 0.1
ERROR_PAUSE_SECONDS = 1.0
ERROR_TEXT_CHARS = 200


def host_of(url: str) -> str:
    """What a log line may show of the alert URL: its host (the path of a webhook is secret)."""
    return urlsplit(url).hostname or "?"


class AlertLoop:
    """Derive, then send what is due, in seq order; on PostgreSQL only in the lease holder."""

    def __init__(
        self,
        outbox: AlertOutbox,
        projector: Projector,
        url: str,
        *,
        max_per_minute: int,
        retry_seconds: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._outbox = outbox
        self._projector = projector
        self._url = url
        self._max_per_minute = max_per_minute
        self._retry_seconds = retry_seconds
        self._metrics = metrics
        self._clock = clock
        self._woken = asyncio.Event()
        self._log = logger.bind(alert_host=host_of(url))

    def wake(self) -> None:
        """The read models moved: new deliveries may raise alerts."""
        self._woken.set()

    async def run(self) -> None:
        """Step until cancelled; a failing step is logged and tried again after a pause."""
        self._log.info("alerting_started", max_per_minute=self._max_per_minute)
        timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    wait = await self.step(session)
                except Exception as exc:  # the database is unreachable, locked, ...
                    self._log.error("alerting_step_failed", error=self._scrub(str(exc)))
                    wait = ERROR_PAUSE_SECONDS
                await self._sleep(wait)

    async def step(self, session: aiohttp.ClientSession) -> float:
        """Derive what is new, send what is due; returns how long to wait before the next."""
        if not self._projector.active:  # another process holds the lease: it alerts
            self._metrics.alerts_pending.set(0)
            return IDLE_SECONDS
        derived = 0
        for _ in range(DERIVE_BATCHES_PER_STEP):
            folded = await self._outbox.derive(DERIVE_BATCH)
            derived += folded
            if folded < DERIVE_BATCH:
                break
        wait = await self._send_due(session)
        return 0.0 if derived >= DERIVE_BATCH * DERIVE_BATCHES_PER_STEP else wait

    async def _send_due(self, session: aiohttp.ClientSession) -> float:
        rows = await self._outbox.pending(PENDING_BATCH)
        self._metrics.alerts_pending.set(len(rows))
        now = self._clock()
        due = list(takewhile(lambda row: row.next_attempt_at <= now, rows))
        if not due:  # in seq order: the first waits for its retry, and the rest behind it
            return IDLE_SECONDS if not rows else min(rows[0].next_attempt_at - now, IDLE_SECONDS)
        sent = await self._outbox.sent_since(now - alerts.WINDOW_SECONDS)
        waiting = [alerts.Alert.from_fields(row.fields) for row in due]
        messages = alerts.plan(waiting, len(sent), self._max_per_minute)
        if not messages:  # a flood was summed up within the minute: wait for room
            return max(MIN_STEP_SECONDS, min(sent) + alerts.WINDOW_SECONDS - now)
        attempts = {row.seq: row.attempts for row in due}
        for message in messages:
            error = await self._post(session, message)
            if error is not None:
                return await self._failed(message, attempts, error)
            await self._outbox.mark_sent(message.seqs, self._clock())
            for alert in message.alerts:
                self._metrics.alerts_sent.labels(alert.kind).inc()
            self._log.info("alert_sent", **_described(message))
        return 0.0  # more may be due already

    async def _post(self, session: aiohttp.ClientSession, message: alerts.Message) -> str | None:
        """None on a 2xx; else what went wrong, without the URL's secrets."""
        try:
            async with session.post(self._url, json=message.body, allow_redirects=False) as answer:
                if 200 <= answer.status < 300:
                    return None
                text = (await answer.text(errors="replace"))[:ERROR_TEXT_CHARS]
                return self._scrub(f"HTTP {answer.status}: {text.strip()}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return self._scrub(f"{type(exc).__name__}: {exc}"[:ERROR_TEXT_CHARS])

    async def _failed(self, message: alerts.Message, attempts: dict[int, int], error: str) -> float:
        now = self._clock()
        failures = []
        for alert in message.alerts:
            attempt = attempts[alert.seq] + 1
            retry_at = None
            if attempt < MAX_ATTEMPTS:
                retry_at = now + self._retry_seconds * 2 ** (attempt - 1)
            failures.append(FailedAttempt(alert.seq, attempt, error, retry_at))
            if retry_at is None:
                self._metrics.alerts_failed.labels(alert.kind).inc()
        await self._outbox.mark_failed(failures, now)
        first = failures[0]
        if first.retry_at is None:
            self._log.error(
                "alert_failed", **_described(message), attempts=first.attempts, error=error
            )
            return 0.0
        self._log.warning(
            "alert_retry",
            **_described(message),
            attempt=first.attempts,
            retry_in=round(first.retry_at - now, 3),
            error=error,
        )
        return first.retry_at - now

    def _scrub(self, text: str) -> str:
        """`text` without the alert URL's path or query (a webhook's secret)."""
        parts = urlsplit(self._url)
        text = text.replace(self._url, f"{parts.scheme}://{parts.netloc}/...")
        for secret in (parts.path, parts.query):
            if len(secret) > 1:
                text = text.replace(secret, "/...")
        return text

    async def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)  # go on at once, letting the loop breathe
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._woken.wait()
                await asyncio.sleep(MIN_STEP_SECONDS)  # let a burst of commits gather
        self._woken.clear()


def _described(message: alerts.Message) -> dict[str, object]:
    """A message's log fields: kind and seq; for a summary its kind, count and first seq."""
    if len(message.alerts) == 1:
        alert = message.alerts[0]
        return {"kind": alert.kind, "seq": alert.seq}
    return {
        "kind": alerts.SUMMARY,
        "seq": message.alerts[-1].seq,
        "first_seq": message.alerts[0].seq,
        "count": len(message.alerts),
    }


def alert_loop_for(settings: Settings, storage: Storage, metrics: Metrics) -> AlertLoop | None:
    """The alert loop `PROJECTOR_ALERT_URL` asks for on `storage`, or None when it is unset."""
    if not settings.alert_url:
        return None
    return AlertLoop(
        storage.alerts,
        storage.projector,
        settings.alert_url,
        max_per_minute=settings.alert_max_per_minute,
        retry_seconds=settings.alert_retry_seconds,
        metrics=metrics,
    )

"""Deliveries per minute over the last hour, counted by this process (GET /v1/stats)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web

from projector import answers
from projector.api import environment_param, query_params
from projector.http import ApiError, Handler, json_answer
from projector.storage.port import Reads

# The operator page's chart covers one hour; older minutes are overwritten in place.
WINDOW_MINUTES = 60
OUTCOMES = ("new", "duplicate", "flagged", "refused")


class DeliveryMinutes:
    """A ring of per-minute counts: stored (new, duplicate, flagged) and refused deliveries.

    Refused deliveries are never stored, so this process's own count is the only one there is.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        # Slot i holds the minute m with m % WINDOW_MINUTES == i, and its counts by outcome.
        self.minutes = [-1] * WINDOW_MINUTES
        self.counts = [[0] * len(OUTCOMES) for _ in range(WINDOW_MINUTES)]

    def count(self, outcome: str) -> None:
        """Count one delivery of `outcome` (one of OUTCOMES) in the current minute."""
        minute = int(self.clock() // 60)
        slot = minute % WINDOW_MINUTES
        if self.minutes[slot] != minute:  # a minute an hour old (or never used): start again
            self.minutes[slot] = minute
            self.counts[slot] = [0] * len(OUTCOMES)
        self.counts[slot][OUTCOMES.index(outcome)] += 1

    def last(self, minutes: int) -> list[answers.MinuteDeliveries]:
        """The last `minutes` minutes, oldest first, the current (partial) one last."""
        now = int(self.clock() // 60)
        rows = []
        for minute in range(now - minutes + 1, now + 1):
            slot = minute % WINDOW_MINUTES
            counts = self.counts[slot] if self.minutes[slot] == minute else [0] * len(OUTCOMES)
            start = datetime.fromtimestamp(minute * 60, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            new, duplicate, flagged, refused = counts
            rows.append(
                answers.MinuteDeliveries(
                    minute=start, new=new, duplicate=duplicate, flagged=flagged, refused=refused
                )
            )
        return rows


def _minutes(params: dict[str, str]) -> int:
    raw = params.get("minutes", str(WINDOW_MINUTES))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 2) or not 1 <= int(raw) <= 60:
        raise ApiError(
            400, "invalid_minutes", f"minutes must be a whole number from 1 to {WINDOW_MINUTES}"
        )
    return int(raw)


def make_stats_handler(per_minute: DeliveryMinutes, reads: Reads) -> Handler:
    """`GET /v1/stats`: this process's deliveries per minute, and each projection's lag now."""

    async def stats(request: web.Request) -> web.Response:
        params = query_params(request, ("minutes",))
        environment_param(params)  # both environments are counted; a typo is still a 400
        minutes = _minutes(params)
        status = await reads.storage_status(datetime.now(UTC))
        return json_answer(
            answers.ProcessStats(
                deliveries_per_minute=per_minute.last(minutes),
                projections=[
                    answers.ProjectionLagAnswer(
                        name=p.name,
                        lag_seconds=round(p.lag_seconds, 3),
                        last_rebuild_at=p.rebuilt_at,
                    )
                    for p in status.projections
                ],
            )
        )

    return stats

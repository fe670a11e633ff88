"""Benchmark helpers: the projection-lag probe, ETag collection, and the printed table."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from projector.signature import SIGNATURE_HEADER, sign_body
from tests.support import LIVE_KEY

PROBE_EVERY = 0.1  # seconds between probe deliveries
POLL_EVERY = 0.002  # seconds between reads while waiting for a probe to show


def _connection(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)


class BackgroundLoop:
    """Runs `_run` in a thread of its own for the span of a `with` block; `_run` returns
    once `self._stop` is set, which leaving the block does."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(30)


class LagProbe(BackgroundLoop):
    """While load runs: post a marker delivery, time from its 200 until the banner shows it.

    The banner is read from `read_url` if given (another process on the same log), else `url`.
    """

    def __init__(self, url: str, token: str, read_url: str | None = None) -> None:
        self._url, self._token = url, token
        self._read_url = read_url or url
        self._lags: list[float] = []
        super().__init__("lag-probe")

    def _run(self) -> None:
        post, read = _connection(self._url), _connection(self._read_url)
        auth = {"Authorization": f"Bearer {self._token}"}
        number = 0
        while not self._stop.wait(PROBE_EVERY):
            number += 1
            account = f"probe_{time.time_ns()}_{number}"
            body = json.dumps(
                {
                    "linked_account_id": account,
                    "environment": "live",
                    "event": "Connection Created",
                    "slug": "probe",
                    "createdAt": "Mon, 01 Jun 2026 05:42:56 GMT",
                }
            ).encode()
            headers = {SIGNATURE_HEADER: sign_body(body, LIVE_KEY.encode())}
            post.request("POST", "/webhooks/refold", body, headers)
            answer = post.getresponse()
            answer.read()
            acked = time.perf_counter()
            if answer.status != 200:
                continue
            path = f"/v1/accounts/{account}/connections?environment=live"
            while True:  # bounded: the probe gives up after 10 s
                read.request("GET", path, headers=auth)
                shown = json.loads(read.getresponse().read())["connections"]
                if shown or time.perf_counter() - acked > 10:
                    self._lags.append(time.perf_counter() - acked)
                    break
                time.sleep(POLL_EVERY)

    def figures(self) -> dict[str, float]:
        lags = sorted(self._lags)
        if not lags:
            return {"lag_probes": 0}
        return {
            "lag_probes": len(lags),
            "lag_p50_ms": lags[len(lags) // 2] * 1000,
            "lag_p99_ms": lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000,
            "lag_max_ms": lags[-1] * 1000,
        }


def wait_for(check: Callable[[], bool], seconds: float) -> None:
    """Return once `check()` is true; raise if it is not within `seconds` (polls every 50 ms)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{getattr(check, '__name__', check)} not true after {seconds} s")
        time.sleep(0.05)


def write_etags(url: str, token: str, path: Path, accounts: int) -> Path:
    """`path<TAB>etag` for the banner of the first `accounts` accounts."""
    conn = _connection(url)
    with path.open("w") as out:
        for number in range(accounts):
            target = f"/v1/accounts/acct_{number}/connections?environment=live"
            conn.request("GET", target, headers={"Authorization": f"Bearer {token}"})
            answer = conn.getresponse()
            answer.read()
            out.write(f"{target}\t{answer.headers['ETag']}\n")
    return path


def _value(summary: dict[str, Any], run: str, figure: str) -> float | None:
    entry = summary.get(run, {}).get(figure)
    return None if entry is None else float(entry["median"])


def ratio(
    summary: dict[str, Any],
    rounds: list[dict[str, Any]],
    top: tuple[str, str],
    bottom: tuple[str, str],
) -> str:
    """The ratio of medians, then each round's own ratio (service and baseline side by side)."""
    a, b = _value(summary, *top), _value(summary, *bottom)
    if a is None or not b:
        return "-"
    each = [r[top[0]][top[1]] / r[bottom[0]][bottom[1]] for r in rounds]
    return f"{a / b:.2f}x  (rounds: {' '.join(f'{x:.2f}' for x in each)})"


def table(summary: dict[str, Any], rounds: list[dict[str, Any]], size: int) -> str:
    """The printed table: every run's median (min-max), then the headline ratios."""
    lines = [f"{'run':24} {'figure':14} {'median':>12} {'min':>12} {'max':>12}"]
    for run, figures in summary.items():
        for figure, values in figures.items():
            lines.append(
                f"{run:24} {figure:14} {values['median']:12.2f} {values['min']:12.2f} "
                f"{values['max']:12.2f}"
            )
    quarter = size // 4
    checks = [
        # Issue 13 withdrew "0.6x bare" and "8x naive": the targets are now 0.5x the verified
        # ceiling and 1.5x naive on this disk (10x naive with a 2 ms fsync: slow_fsync.py).
        ("ingest service / bare", ("ingest_service", "rate"), ("ingest_bare", "rate"), "-"),
        ("ingest service / naive", ("ingest_service", "rate"), ("ingest_naive", "rate"), ">= 1.5"),
        # Issue 13's restated target: against bare + verify + orjson.loads, storing nothing.
        (
            "ingest service / verified",
            ("ingest_service", "rate"),
            ("ingest_verified", "rate"),
            ">= 0.5",
        ),
        ("ceiling: verified / bare", ("ingest_verified", "rate"), ("ingest_bare", "rate"), "-"),
        ("ceiling: parsed / bare", ("ingest_parsed", "rate"), ("ingest_bare", "rate"), "-"),
        # The scan parses with orjson (issue 13); the rebuild may use two processes, so the
        # per-core rows compare deliveries per CPU second (context, not the target).
        (
            f"rebuild {size} / scan (orjson)",
            (f"rebuild_{size}", "rate"),
            (f"scan_{size}", "rate"),
            ">= 0.4",
        ),
        (
            "  per core: rebuild / scan",
            (f"rebuild_{size}", "rate_per_core"),
            (f"scan_{size}", "rate_per_core"),
            "-",
        ),
        (
            "  scan orjson / json.loads",
            (f"scan_{size}", "rate"),
            (f"scan_json_{size}", "rate"),
            "-",
        ),
        (
            f"rebuild {quarter} / scan",
            (f"rebuild_{quarter}", "rate"),
            (f"scan_{quarter}", "rate"),
            ">= 0.4",
        ),
        ("cold banner GET / bare GET", ("get_banner", "rate"), ("get_bare", "rate"), ">= 0.4"),
        (
            "cold banner GET / naive read",
            ("get_banner", "rate"),
            ("get_naive_read", "rate"),
            ">= 2",
        ),
        (
            "  CPU/request: naive / cold banner",
            ("get_naive_read", "server_cpu_us"),
            ("get_banner", "server_cpu_us"),
            "-",
        ),
        ("banner GET hot / bare GET", ("get_banner_hot", "rate"), ("get_bare", "rate"), ">= 0.5"),
        ("banner 304 / bare GET", ("get_banner_304", "rate"), ("get_bare", "rate"), "-"),
    ]
    lines.append("")
    lines.append(f"{'headline ratio':32} {'target':>8}   median ratio (each round's ratio)")
    for label, top, bottom, target in checks:
        lines.append(f"{label:32} {target:>8}   {ratio(summary, rounds, top, bottom)}")
    for label, run, figure, target in (
        ("ingest p99 at half rate, ms", "ingest_service_half", "p99_ms", "<= 10"),
        ("projection lag p99, ms", "ingest_service_half", "lag_p99_ms", "<= 100"),
        ("cold banner GET p99, ms", "get_banner", "p99_ms", "<= 10"),
        ("banner GET hot p99, ms", "get_banner_hot", "p99_ms", "<= 5"),
        (f"rebuild {quarter} peak RSS, MB", f"rebuild_{quarter}", "peak_rss_mb", "flat"),
        (f"rebuild {size} peak RSS, MB", f"rebuild_{size}", "peak_rss_mb", "flat"),
        ("start-up on the big log, s", "startup", "seconds", "< 2"),
    ):
        value = _value(summary, run, figure)
        shown = "-" if value is None else f"{value:.2f}"
        lines.append(f"{label:32} {target:>8}   {shown}")
    return "\n".join(lines)

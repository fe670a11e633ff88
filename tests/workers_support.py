"""`projector serve --workers N` in tests: its children, their answers, a load to kill under."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import aiohttp

from projector.sender import environment_of
from tests.crash_load import delivery
from tests.support import AUTH, KEY_BY_ENVIRONMENT, REPO, Service, signed


def log_lines(service: Service) -> list[dict[str, object]]:
    """The service's JSON log lines (supervisor and children share its log file)."""
    return [json.loads(line) for line in service.logs().splitlines() if line.startswith('{"')]


def children(service: Service) -> dict[str, int]:
    """Each child's name and the pid it last started with, from the supervisor's log."""
    started: dict[str, int] = {}
    for line in log_lines(service):
        if line.get("message") == "worker_started" and "worker" in line:
            started[str(line["worker"])] = int(str(line["pid"]))
    return started


def alive(pid: int) -> bool:
    """Whether `pid` runs (and is not a zombie left for its parent to reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_until(check: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll `check()` until true, or fail saying `what` did not happen within `seconds`."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds}s")
        time.sleep(0.05)


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def wait_ready(service: Service, seconds: float = 30) -> None:
    """Until /readyz answers 200 (on SQLite: a worker reached the writer)."""
    wait_until(lambda: status_of(f"{service.url}/readyz") == 200, seconds, "readiness")


async def post_one_by_one(url: str, bodies: Sequence[bytes]) -> list[int]:
    """POST each body in order, each on a new connection (so any worker may take it)."""
    statuses = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for body in bodies:
            key = KEY_BY_ENVIRONMENT[environment_of(body, "test")]
            async with session.post(url, data=body, headers=signed(body, key)) as answer:
                await answer.read()
                statuses.append(answer.status)
    return statuses


async def get_all(base: str, paths: Sequence[str]) -> dict[str, object]:
    """Each path's JSON answer, each read on a new connection."""
    connector = aiohttp.TCPConnector(force_close=True)
    answers: dict[str, object] = {}
    async with aiohttp.ClientSession(connector=connector) as session:
        for path in paths:
            async with session.get(f"{base}{path}", headers=AUTH) as answer:
                assert answer.status == 200, (path, answer.status, await answer.text())
                answers[path] = await answer.json()
    return answers


class Load:
    """tests.crash_load posting to a service until stopped; every 200 is written to `acks`."""

    def __init__(self, service: Service, acks: Path, concurrency: int = 16) -> None:
        self.acks = acks
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.crash_load",
                f"{service.url}/webhooks/refold",
                str(acks),
                "--concurrency",
                str(concurrency),
                "--max-seconds",
                "180",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )

    def acked(self) -> int:
        return len(self.acks.read_bytes().split()) if self.acks.exists() else 0

    def wait_for_more(self, than: int, seconds: float = 60) -> None:
        wait_until(lambda: self.acked() > than + 20, seconds, f"more than {than + 20} 200s")

    def stop(self) -> dict[str, object]:
        self.process.terminate()
        output, _ = self.process.communicate(timeout=60)
        return dict(json.loads(output.strip().splitlines()[-1]))


def unlogged_acknowledgements(acks: Path, bodies: Sequence[bytes]) -> int:
    """How many acknowledged deliveries are missing from `bodies`, the log's bodies."""
    acked = Counter(delivery(int(line))[1] for line in acks.read_text().split())
    logged = Counter(bodies)
    return sum(max(0, count - logged[body]) for body, count in acked.items())

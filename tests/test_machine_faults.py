"""Machine faults: a real disk filling up under a running service, and a burst beyond its queue."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import AUTH, REPO, Service, signed, wait_projected_http

pytestmark = pytest.mark.e2e

TIMEOUT = aiohttp.ClientTimeout(total=60)
TMPFS_SIZE = "8m"
PAGE = os.sysconf("SC_PAGE_SIZE")  # tmpfs hands out space in pages

# Run inside the server's mount namespace (nsenter): SQLite resolves the /proc/<pid>/root
# symlink itself and would open the empty folder under the mount instead of the tmpfs.
# The files are listed first: even a read-only connection creates -wal and -shm files.
READ_LOG = """
import json, os, sqlite3, sys
db = sys.argv[1]
folder = os.path.dirname(db)
files = {name: os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)}
conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
rows = conn.execute("SELECT seq, environment, body FROM deliveries ORDER BY seq").fetchall()
check = [row[0] for row in conn.execute("PRAGMA integrity_check")]
conn.close()
print(json.dumps({
    "rows": [[seq, environment, body.hex()] for seq, environment, body in rows],
    "integrity": check,
    "files": files,
}))
"""


# --- helpers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What the service answered to one delivery."""

    body: bytes
    status: int
    document: dict[str, Any]
    retry_after: str | None


@dataclass(frozen=True)
class LogCopy:
    """The log as SQLite reads it: (seq, environment, body) rows and the integrity check."""

    rows: list[tuple[int, str, bytes]]
    integrity: list[str]
    files: dict[str, int]


def delivery_body(account: str, slug: str = "slack") -> bytes:
    """A distinct, validly shaped `Connection Created` body for `account`."""
    payload = {
        "linked_account_id": account,
        "org_id": "645270e37917442c4307297a",
        "environment": "live",
        "type": "General",
        "event": "Connection Created",
        "slug": slug,
        "createdAt": "Wed, 01 Jul 2026 12:00:00 GMT",
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def session(limit: int = 16) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=TIMEOUT, connector=aiohttp.TCPConnector(limit=limit))


async def deliver(http: aiohttp.ClientSession, base: str, body: bytes) -> Outcome:
    """POST one signed delivery; the answer whatever it is."""
    url = f"{base}/webhooks/refold"
    async with http.post(url, data=body, headers=signed(body)) as answer:
        document = await answer.json(content_type=None)
        return Outcome(body, answer.status, document, answer.headers.get("Retry-After"))


async def deliver_all(base: str, bodies: Iterable[bytes], in_flight: int = 8) -> list[Outcome]:
    async with session(in_flight) as http:
        return list(await asyncio.gather(*(deliver(http, base, body) for body in bodies)))


async def get_status(base: str, path: str) -> int:
    async with session(1) as http, http.get(f"{base}{path}", headers=AUTH) as answer:
        await answer.read()
        return answer.status


async def projections(base: str) -> dict[str, Any]:
    async with session(1) as http, http.get(f"{base}/v1/projections", headers=AUTH) as answer:
        assert answer.status == 200
        return dict(await answer.json())


def assert_refused(outcome: Outcome, code: str) -> None:
    """A 503 that tells the sender to come back, in the one error shape."""
    assert outcome.status == 503, outcome
    assert outcome.retry_after is not None, outcome
    assert int(outcome.retry_after) > 0, outcome
    assert outcome.document["error"]["code"] == code, outcome
    assert "retry" in outcome.document["error"]["message"], outcome


def assert_log_holds(
    rows: list[tuple[int, str, bytes]], acked: list[Outcome], refused: Iterable[Outcome]
) -> None:
    """Seqs without gaps; each acknowledged body once at its seq; nothing only refused."""
    assert [seq for seq, _, _ in rows] == list(range(1, len(rows) + 1))
    by_seq = {seq: body for seq, _, body in rows}
    stored = Counter(body for _, _, body in rows)
    for outcome in acked:
        assert by_seq[outcome.document["seq"]] == outcome.body
        assert stored[outcome.body] == 1, outcome.document
    acked_bodies = {outcome.body for outcome in acked}
    for outcome in refused:
        if outcome.body not in acked_bodies:
            assert stored[outcome.body] == 0, outcome.body


def log_lines(service: Service, message: str) -> list[dict[str, Any]]:
    """The service's JSON log lines with this message."""
    found = []
    for line in service.logs().splitlines():
        if f'"{message}"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("message") == message:
            found.append(entry)
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


# --- a service whose disk is a small tmpfs of its own -----------------------------------


@dataclass
class TmpfsService(Service):
    """`projector serve` in a private mount namespace whose database folder is a small tmpfs.

    `sh` mounts the tmpfs, leaves a `sleep` behind as the namespace's keeper (so the log can
    be read after the server exits), and then execs the server: its pid is the server's.
    """

    keeper: int | None = None

    @property
    def mount(self) -> Path:
        return self.db.parent

    @property
    def in_namespace(self) -> int:
        """A pid in the mount namespace: the server's while it runs, then the keeper's."""
        if self.process is not None and self.process.poll() is None:
            return self.process.pid
        assert self.keeper is not None
        return self.keeper

    @property
    def inside(self) -> Path:
        """The mount as this process sees it, through the root of a process inside."""
        return Path(f"/proc/{self.in_namespace}/root{self.mount}")

    def start(self, timeout: float = 30) -> TmpfsService:
        self.log_path = self.mount.with_suffix(".log")
        keeper_file = self.mount.with_suffix(".keeper")
        script = (
            'mount -t tmpfs -o size="$2" tmpfs "$1" && { sleep 300 & echo $! > "$3"; }'
            ' && exec "$4" -m projector.cli serve --port "$5"'
        )
        argv = [tool("unshare"), "-m", "--propagation", "private", "sh", "-c", script, "sh"]
        argv += [str(self.mount), TMPFS_SIZE, str(keeper_file), sys.executable, str(self.port)]
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                argv, env=self.env, stdout=log_file, stderr=log_file, cwd=REPO
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the tmpfs service exited early:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        self.keeper = int(keeper_file.read_text())
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"the tmpfs service did not answer in {timeout}s:\n{self.logs()}")

    def release(self) -> None:
        """Kill the server if it still runs, and the keeper: the tmpfs goes with them."""
        self.kill()
        if self.keeper is not None:
            keeper, self.keeper = self.keeper, None
            with contextlib.suppress(ProcessLookupError):
                os.kill(keeper, signal.SIGKILL)

    def read_log(self) -> LogCopy:
        """The log, read with SQLite inside the mount namespace, read-only."""
        enter = [tool("nsenter"), "--target", str(self.in_namespace), "--mount", "--"]
        result = subprocess.run(
            [*enter, sys.executable, "-c", READ_LOG, str(self.db)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        found = json.loads(result.stdout)
        rows = [(int(s), str(e), bytes.fromhex(b)) for s, e, b in found["rows"]]
        return LogCopy(rows, found["integrity"], found["files"])

    def free_pages(self) -> int:
        stat = os.statvfs(self.inside)
        return stat.f_bavail * stat.f_frsize // PAGE

    def fill(self) -> int:
        """Write a filler file until the tmpfs refuses more (ENOSPC); returns its size."""
        filler = os.open(self.inside / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        chunk = b"\0" * (256 * 1024)
        try:
            while True:
                try:
                    written = os.write(filler, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                if written < len(chunk):
                    chunk = chunk[:PAGE]
        finally:
            os.close(filler)
        return (self.inside / "filler").stat().st_size

    def give_back(self, pages: int) -> None:
        """Shrink the filler by `pages` pages: that much space returns."""
        filler = self.inside / "filler"
        os.truncate(filler, max(0, filler.stat().st_size - pages * PAGE))

    def unfill(self) -> None:
        (self.inside / "filler").unlink()


def tool(name: str) -> str:
    """The full path of a system tool (tmpfs_problem has checked that it exists)."""
    return shutil.which(name) or name


def tmpfs_problem(probe: Path) -> str | None:
    """Why a private tmpfs cannot be mounted here, or None when it can."""
    if os.geteuid() != 0:
        return "mounting a private tmpfs needs root (unshare -m + mount -t tmpfs)"
    missing = [tool for tool in ("unshare", "nsenter", "mount") if shutil.which(tool) is None]
    if missing:
        return f"needs util-linux tools that are missing here: {', '.join(missing)}"
    probe.mkdir()
    mount = 'mount -t tmpfs -o size=1m tmpfs "$1"'
    result = subprocess.run(
        [tool("unshare"), "-m", "--propagation", "private", "sh", "-c", mount, "sh", str(probe)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        return f"cannot mount a tmpfs in a private mount namespace: {result.stderr.strip()}"
    return None


@pytest.fixture
def tmpfs_service(tmp_path: Path) -> Iterator[TmpfsService]:
    """A real server whose database lives on an 8 MiB tmpfs nobody else sees."""
    problem = tmpfs_problem(tmp_path / "probe")
    if problem is not None:
        pytest.skip(problem)
    mount = tmp_path / "disk"
    mount.mkdir()
    running = TmpfsService(mount / "projector.sqlite3").start()
    yield running
    running.release()


# --- 1. the disk fills up ---------------------------------------------------------------


async def trickle_until_one_fits(service: TmpfsService) -> list[Outcome]:
    """Give space back a page at a time, one delivery per page, until one is stored."""
    tried: list[Outcome] = []
    async with session(1) as http:
        for i in range(200):
            await asyncio.to_thread(service.give_back, 1)
            tried.append(await deliver(http, service.url, delivery_body(f"trickle-{i:03d}")))
            if tried[-1].status == 200:
                break
    return tried


async def deliver_until_accepted(base: str, prefix: str, attempts: int = 100) -> list[Outcome]:
    """One delivery after another (a fresh body each time) until one gets 200 (bounded)."""
    tried: list[Outcome] = []
    async with session(1) as http:
        for i in range(attempts):
            tried.append(await deliver(http, base, delivery_body(f"{prefix}-{i:03d}")))
            if tried[-1].status == 200:
                break
            await asyncio.sleep(0.2)
    return tried


async def deliver_until_checkpointed(service: TmpfsService, attempts: int = 400) -> list[Outcome]:
    """Deliver one at a time until SQLite's auto-checkpoint copies the WAL into the file."""
    database = service.inside / service.db.name
    size = database.stat().st_size
    sent: list[Outcome] = []
    async with session(1) as http:
        for i in range(attempts):
            sent.append(await deliver(http, service.url, delivery_body(f"ckpt-{i:03d}")))
            if database.stat().st_size > size:
                break
    return sent


async def wait_for_log_line(service: Service, message: str) -> list[dict[str, Any]]:
    """The service's log lines with this message, once there is one (up to ~10 s)."""
    for _ in range(200):
        if found := log_lines(service, message):
            return found
        await asyncio.sleep(0.05)
    return []


async def test_a_full_disk_refuses_with_503_keeps_the_log_and_recovers_by_itself(
    tmpfs_service: TmpfsService,
) -> None:
    """Full: 503 + Retry-After, the log intact; space back: 200 again, caught up, no errors."""
    service, base = tmpfs_service, tmpfs_service.url
    figures: dict[str, Any] = {}

    # 40 deliveries acknowledged and projected. So few commits keep the WAL far below its
    # 1,000-page auto-checkpoint: it never restarted, so it has no room to reuse once full.
    before = await deliver_all(base, [delivery_body(f"before-{i:03d}") for i in range(40)])
    assert [o.status for o in before] == [200] * 40
    await asyncio.to_thread(wait_projected_http, base)

    # The disk fills up: every delivery is refused, nothing else breaks.
    figures["filler_bytes"] = await asyncio.to_thread(service.fill)
    assert service.free_pages() == 0
    while_full = []
    async with session(1) as http:
        for i in range(10):
            while_full.append(await deliver(http, base, delivery_body(f"full-{i:03d}")))
    # Together, so they share a group commit that fails as a whole.
    while_full += await deliver_all(base, [delivery_body(f"full-{i:03d}") for i in range(10, 30)])
    for outcome in while_full:
        assert_refused(outcome, "storage_unavailable")
    assert service.process is not None
    assert service.process.poll() is None
    for path in ("/healthz", "/v1/accounts/before-000/connections", "/v1/events?limit=5"):
        assert await get_status(base, path) == 200, path
    assert (await projections(base))["log_head"] == 40
    failures = log_lines(service, "append_failed")
    assert failures
    assert {f["error"] for f in failures} == {"database or disk is full"}
    held = await asyncio.to_thread(service.read_log)
    assert held.integrity == ["ok"]
    assert len(held.rows) == 40
    assert_log_holds(held.rows, before, while_full)

    # A little space comes back, and the WAL takes all of it for the one delivery that fits.
    # If its commit had room to fold it too, it is projected; if not, the fold failed (in
    # the commit, then in the projector's batch) and is retried later: never a fold error.
    trickled = await trickle_until_one_fits(service)
    assert trickled[-1].status == 200, trickled[-1]
    for outcome in trickled[:-1]:
        assert_refused(outcome, "storage_unavailable")
    assert service.free_pages() == 0
    stalled = await projections(base)
    assert stalled["log_head"] == 41
    assert [p["errors"] for p in stalled["projections"]] == [0, 0]
    if {p["position"] for p in stalled["projections"]} != {41}:
        assert {p["position"] for p in stalled["projections"]} == {40}
        failed = await wait_for_log_line(service, "projection_batch_failed")
        failed += log_lines(service, "projection_in_commit_failed")
        assert {f["error"] for f in failed} == {"database or disk is full"}
    figures["folded_in_the_commit_that_filled_the_disk"] = 41 in {
        p["position"] for p in stalled["projections"]
    }

    # Space returns; without a restart, deliveries are stored again and projections catch up.
    service.unfill()
    returned = time.monotonic()
    after_space = await deliver_until_accepted(base, "after")
    figures["seconds_to_recover"] = round(time.monotonic() - returned, 3)
    assert after_space[-1].status == 200, after_space[-1]
    more = await deliver_all(base, [delivery_body(f"later-{i:03d}") for i in range(20)])
    assert [o.status for o in more] == [200] * 20
    checkpointed = await deliver_until_checkpointed(service)
    assert [o.status for o in checkpointed] == [200] * len(checkpointed)
    assert len(checkpointed) < 400, "the WAL was never checkpointed into the database file"
    caught_up = await asyncio.to_thread(wait_projected_http, base, 20)
    assert [p["position"] for p in caught_up["projections"]] == [caught_up["log_head"]] * 2
    assert [p["errors"] for p in caught_up["projections"]] == [0, 0], caught_up

    acked = [o for o in before + trickled + after_space + more + checkpointed if o.status == 200]
    refused = [o for o in while_full + trickled + after_space if o.status != 200]
    assert caught_up["log_head"] == len(acked)
    not_stored = [
        line
        for line in log_lines(service, "delivery_refused")
        if (line["reason"], line["status"]) == ("storage_unavailable", 503)
    ]
    assert len(not_stored) == len(refused)

    # SIGTERM: a clean exit, a checkpointed file, and the whole log read back from the tmpfs.
    assert await asyncio.to_thread(service.stop) == 0, service.logs()[-3000:]
    final = await asyncio.to_thread(service.read_log)
    assert final.integrity == ["ok"]
    assert len(final.rows) == len(acked)
    assert_log_holds(final.rows, acked, refused)
    assert list(final.files) == [service.db.name], final.files

    figures.update(
        acked_before_full=len(before),
        refused_while_full=len(while_full),
        pages_given_back_until_one_fit=len(trickled),
        deliveries_until_checkpoint=len(checkpointed),
        refused_total=len(refused),
        acked_total=len(acked),
        projection_failures=len(log_lines(service, "projection_batch_failed")),
        files_after_exit=final.files,
    )
    print("\nfull disk:", json.dumps(figures))


# --- 2. a burst beyond the queue --------------------------------------------------------


# Below the 500 requests in flight: the queue can never hold more deliveries than that.
MAX_PENDING = 50


@pytest.fixture
def bounded_service(db_path: Path) -> Iterator[Service]:
    """A real server that lets at most MAX_PENDING deliveries wait for the writer."""
    running = Service(db_path, extra_env={"PROJECTOR_MAX_PENDING": str(MAX_PENDING)}).start()
    yield running
    running.kill()


async def test_a_burst_beyond_max_pending_is_refused_with_503_and_memory_stays_bounded(
    bounded_service: Service,
) -> None:
    """Beyond the bound: 503 overloaded; what got 200 is stored, nothing else; memory flat."""
    service = bounded_service
    assert service.process is not None
    base = service.url
    figures: dict[str, Any] = {}
    bodies = [delivery_body(f"burst-{i:04d}", slug=f"app{i % 7}") for i in range(2000)]
    memory_before = memory_kib(service.process.pid)

    # (status, deliveries of the burst answered when it came): proof that it came mid-burst.
    health: list[tuple[int, int]] = []
    burst_over = asyncio.Event()
    answered = 0

    async def deliver_counted(http: aiohttp.ClientSession, body: bytes) -> Outcome:
        nonlocal answered
        outcome = await deliver(http, base, body)
        answered += 1
        return outcome

    async def watch_health() -> None:
        async with session(1) as http:
            while not burst_over.is_set():
                async with http.get(f"{base}/healthz") as answer:
                    health.append((answer.status, answered))
                await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_health())
    started = time.monotonic()
    async with session(500) as http:
        burst = list(await asyncio.gather(*(deliver_counted(http, body) for body in bodies)))
    figures["burst_seconds"] = round(time.monotonic() - started, 3)
    burst_over.set()
    await watcher
    memory_after = memory_kib(service.process.pid)

    statuses = Counter(o.status for o in burst)
    figures["statuses"] = dict(statuses)
    assert set(statuses) <= {200, 503}, statuses
    refused = [o for o in burst if o.status == 503]
    for outcome in refused:
        assert_refused(outcome, "overloaded")
    assert refused, "no delivery was refused: the queue never reached its bound"
    # Refused at the door (`in_progress`: requests being received or stored), or, rarely,
    # by the writer's own queue bound (`detail`: "N deliveries are waiting ...").
    overloaded = [
        line for line in log_lines(service, "delivery_refused") if line["reason"] == "overloaded"
    ]
    assert len(overloaded) == len(refused)
    waiting = [
        line["in_progress"] if "in_progress" in line else int(line["detail"].split()[0])
        for line in overloaded
    ]
    figures["waiting_when_refused"] = dict(Counter(waiting))
    assert waiting
    assert max(waiting) <= MAX_PENDING

    assert {status for status, _ in health} == {200}
    during = [n for _, n in health if 0 < n < len(bodies)]
    assert during, f"no health check was answered while the burst was answered: {health}"
    figures["healthz_during_burst"] = len(during)
    growth = memory_after["VmHWM"] - memory_before["VmRSS"]
    figures["memory_kib"] = {"before": memory_before, "after": memory_after, "growth": growth}
    assert growth < 200 * 1024

    later = await deliver_all(base, [delivery_body(f"calm-{i:03d}") for i in range(20)], 4)
    assert [o.status for o in later] == [200] * 20
    assert await get_status(base, "/healthz") == 200

    acked = [o for o in burst + later if o.status == 200]
    conn = sqlite3.connect(f"file:{service.db}?mode=ro", uri=True)
    try:
        rows = [
            (int(s), str(e), bytes(b))
            for s, e, b in conn.execute(
                "SELECT seq, environment, body FROM deliveries ORDER BY seq"
            )
        ]
    finally:
        conn.close()
    assert_log_holds(rows, acked, refused)
    assert len(rows) == len(acked)
    figures["acked"] = len(acked)
    figures["refused"] = len(refused)
    print("\nburst:", json.dumps(figures))

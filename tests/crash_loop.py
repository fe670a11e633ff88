"""The crash test: SIGKILL a loaded `projector serve` again and again, then audit the log.

`make reliability` runs it at full length; tests/test_crash.py runs a short version.
python -m tests.crash_loop [--kills N] [--seed S] [--workdir DIR] [--workers N]

With --workers N (N > 1) it runs `serve --workers N` and each SIGKILL hits one of its
children, chosen at random among the HTTP workers and the writer; the supervisor restarts it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.crash_load import delivery
from tests.storage_support import read_models
from tests.support import REPO, Service, run_cli, wait_projected_http
from tests.workers_support import children, wait_ready, wait_until


@dataclass
class CrashFigures:
    """What one run of the crash loop saw; `ok` is the verdict."""

    acknowledged: int = 0
    found: int = 0
    stored_unacknowledged: int = 0
    corrupt: int = 0
    kills: int = 0
    kills_during_rebuild: int = 0
    kills_under_load: int = 0
    kills_with_projection_behind: int = 0
    attempted: int = 0
    cut_off: int = 0
    log_rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return self.acknowledged - self.found

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.corrupt == 0 and not self.problems

    def lines(self) -> list[str]:
        return [
            f"attempted {self.attempted}, cut off in flight by a kill {self.cut_off}, "
            f"log rows {self.log_rows}, corrupt {self.corrupt}, "
            f"kills under load {self.kills_under_load}, "
            f"kills during rebuild {self.kills_during_rebuild}, kills with projection behind "
            f"{self.kills_with_projection_behind}",
            *(f"PROBLEM: {problem}" for problem in self.problems),
            f"acknowledged {self.acknowledged}, found {self.found}, lost {self.lost}, "
            f"stored-but-unacknowledged {self.stored_unacknowledged}, kills {self.kills}",
        ]


def _read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def _projection_behind(db: Path) -> bool:
    """After a kill: had the projector still deliveries to fold (was it mid-work)?"""
    with _read_only(db) as conn:
        head = conn.execute("SELECT coalesce(max(seq), 0) FROM deliveries").fetchone()[0]
        lowest = conn.execute("SELECT min(position) FROM projections").fetchone()[0]
    return bool(lowest is not None and lowest < head)


def _claimed_generation(db: Path) -> int:
    """The newest generation a rebuild has claimed and not yet swapped in (0: none)."""
    with _read_only(db) as conn:
        return int(
            conn.execute("SELECT coalesce(max(generation), 0) FROM rebuild_claims").fetchone()[0]
        )


class Killer:
    """SIGKILLs the service: the one process, or one child of `serve --workers N` at random."""

    def __init__(self, service: Service, workers: int, rng: random.Random) -> None:
        self.service = service
        self.workers = workers
        self.rng = rng
        self.killed: Counter[str] = Counter()
        self.last: tuple[str, int] | None = None

    def kill(self) -> str:
        """Kill; returns which process."""
        if self.workers == 1:
            self.service.kill()
            return "the service"
        started = children(self.service)
        name = self.rng.choice(sorted(started))
        os.kill(started[name], signal.SIGKILL)
        self.last = (name, started[name])
        self.killed[name] += 1
        return name

    def restart(self) -> None:
        """Start the service again, or wait for the supervisor to restart the child."""
        if self.last is None:
            self.service.start()
            return
        name, pid = self.last
        wait_until(lambda: children(self.service)[name] != pid, 30, f"{name}'s restart")
        wait_ready(self.service, 60)


def _kill_during_rebuild(service: Service, killer: Killer, attempts: int = 5) -> bool:
    """Start `projector rebuild` beside the server and SIGKILL both mid-rebuild.

    The kill comes at a random moment after the rebuild claimed its generation. Whether it
    landed mid-rebuild is read from the log afterwards: the claim is still there only if the
    rebuild never swapped. A rebuild that finished first is followed by another, killed
    sooner (bounded); True if one was hit.
    """
    delay = killer.rng.uniform(0.0, 0.3)
    for _ in range(attempts):
        before = _claimed_generation(service.db)
        rebuild = subprocess.Popen(
            [sys.executable, "-m", "projector.cli", "rebuild"],
            env=service.env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while rebuild.poll() is None and time.monotonic() < deadline:
            if _claimed_generation(service.db) > before:
                time.sleep(delay)
                break
            time.sleep(0.01)
        rebuild.kill()
        rebuild.wait(10)
        if _claimed_generation(service.db) > before:  # claimed, never swapped: hit mid-way
            killer.kill()
            return True
        delay /= 4
    killer.kill()
    return False


def _acked(acks: Path) -> int:
    """How many deliveries the load has seen acknowledged so far."""
    return len(acks.read_bytes().split()) if acks.exists() else 0


def _wait_for_acks(acks: Path, more_than: int, timeout: float = 60) -> bool:
    """Wait until more than `more_than` deliveries are acknowledged; False if none came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _acked(acks) > more_than:
            return True
        time.sleep(0.05)
    return False


def _audit_log(db: Path, acked: Counter[bytes], attempted: int, figures: CrashFigures) -> None:
    """Compare the log with what was acknowledged and with what was ever sent."""
    sent = {delivery(i)[1] for i in range(attempted)}
    with _read_only(db) as conn:
        bodies = [bytes(row[0]) for row in conn.execute("SELECT body FROM deliveries")]
        seqs = conn.execute("SELECT count(*), min(seq), max(seq) FROM deliveries").fetchone()
        triggers = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    logged = Counter(bodies)
    figures.log_rows = len(bodies)
    figures.found = sum(min(count, logged[body]) for body, count in acked.items())
    figures.stored_unacknowledged = sum(max(0, n - acked[body]) for body, n in logged.items())
    figures.corrupt = sum(n for body, n in logged.items() if body not in sent)
    if seqs[0] and (seqs[1], seqs[2]) != (1, seqs[0]):
        figures.problems.append(f"seq is not 1..{seqs[0]} without gaps: {seqs}")
    missing = {"deliveries_no_update", "deliveries_no_delete"} - triggers
    if missing:
        figures.problems.append(f"append-only triggers missing: {sorted(missing)}")


def _check_append_only(db: Path, figures: CrashFigures) -> None:
    """The triggers still refuse UPDATE and DELETE on the log."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for statement in ("UPDATE deliveries SET body = x'00'", "DELETE FROM deliveries"):
            try:
                conn.execute(statement)
                figures.problems.append(f"the log accepted: {statement}")
            except sqlite3.DatabaseError as exc:
                if "append-only" not in str(exc):
                    figures.problems.append(f"{statement} failed oddly: {exc}")
    finally:
        conn.close()


def _check_against_rebuild(service: Service, figures: CrashFigures) -> None:
    """The read models the live projector left equal a rebuild from the log."""
    with _read_only(service.db) as conn:
        live = read_models(conn)
        errors = conn.execute("SELECT count(*) FROM projection_errors").fetchone()[0]
    if errors:
        figures.problems.append(f"{errors} projection errors recorded")
    rebuilt = run_cli("rebuild", env=service.env)
    if rebuilt.returncode != 0:
        figures.problems.append(f"projector rebuild failed: {rebuilt.stderr}")
    with _read_only(service.db) as conn:
        if read_models(conn) != live:
            figures.problems.append("the live read models differ from a rebuild from the log")
    verified = run_cli("verify", env=service.env)
    if verified.returncode != 0:
        figures.problems.append(f"projector verify failed:\n{verified.stdout}{verified.stderr}")


def run_crash_loop(
    workdir: Path, kills: int, seed: int, say: Callable[[str], None] = print, workers: int = 1
) -> CrashFigures:
    """Load, kill -9 `kills` times (every third kill during a rebuild), restart, audit."""
    rng = random.Random(seed)
    figures = CrashFigures()
    serve_args = ("--workers", str(workers)) if workers > 1 else ()
    service = Service(workdir / "crash.sqlite3", serve_args=serve_args).start()
    if workers > 1:
        wait_ready(service)
    killer = Killer(service, workers, rng)
    acks = workdir / "acks.txt"
    url = f"{service.url}/webhooks/refold"
    load = subprocess.Popen(
        [sys.executable, "-m", "tests.crash_load", url, str(acks), "--max-seconds", "600"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        acked_at_start = 0
        for number in range(1, kills + 1):
            # Under load: this run of the server has acknowledged deliveries (bounded wait);
            # then a random moment later, while ingest and projection go on.
            figures.kills_under_load += _wait_for_acks(acks, acked_at_start)
            time.sleep(rng.uniform(0.3, 1.5))
            if number % 3 == 2 or (number == kills and not figures.kills_during_rebuild):
                during = _kill_during_rebuild(service, killer)
                figures.kills_during_rebuild += during
                moment = "during a rebuild" if during else "after rebuilds that all finished first"
            else:
                killer.kill()
                moment = "under load"
            figures.kills += 1
            behind = _projection_behind(service.db)
            figures.kills_with_projection_behind += behind
            victim = "" if workers == 1 else f" of {killer.last[0] if killer.last else '?'}"
            say(f"kill {number}: SIGKILL{victim} {moment}; projection behind the head: {behind}")
            acked_at_start = _acked(acks)
            killer.restart()
        time.sleep(0.5)
    finally:
        load.terminate()
        output, _ = load.communicate(timeout=60)
    summary = json.loads(output.strip().splitlines()[-1])
    say(f"load: {summary}")
    if workers > 1:
        say(f"SIGKILLs by child: {dict(sorted(killer.killed.items()))}")
    figures.attempted = summary["attempted"]
    # Sent, then the connection died: these were queued or being committed at the kill.
    figures.cut_off = sum(
        summary["outcomes"].get(name, 0) for name in ("ServerDisconnectedError", "ClientOSError")
    )
    wait_projected_http(service.url, timeout=60)
    if (code := service.stop()) != 0:
        figures.problems.append(f"projector serve exited {code} on SIGTERM")
    acked = Counter(delivery(int(line))[1] for line in acks.read_text().split())
    figures.acknowledged = sum(acked.values())
    _audit_log(service.db, acked, figures.attempted, figures)
    _check_append_only(service.db, figures)
    _check_against_rebuild(service, figures)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=8, help="SIGKILLs per run (default 8)")
    parser.add_argument("--seed", type=int, help="for the kill moments; printed, to re-run one")
    parser.add_argument("--workdir", type=Path, help="keep the database and logs here")
    parser.add_argument(
        "--workers", type=int, default=1, help="serve --workers N; kills hit its children"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    workers = "" if args.workers == 1 else f", serve --workers {args.workers}"
    print(f"crash loop: {args.kills} kills, seed {seed}{workers}", flush=True)
    with tempfile.TemporaryDirectory(prefix="crash-loop-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        figures = run_crash_loop(
            workdir, args.kills, seed, lambda line: print(line, flush=True), args.workers
        )
    for line in figures.lines():
        print(line)
    return 0 if figures.ok else 1


if __name__ == "__main__":
    sys.exit(main())

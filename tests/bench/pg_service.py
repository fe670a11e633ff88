"""The service under load on PostgreSQL (1 or 2 processes) and on SQLite: wrk, then checks.

Every run ends with its own proof: each seq wrk saw acknowledged is in the log holding a body
that was sent, and `projector verify` passes on the log.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import psycopg

from projector.storage.location import PostgresUrl
from tests.bench import probes
from tests.bench.run import BENCH, CONNECTIONS, Figures, Server
from tests.support import AUTH, READ_TOKEN, REPO, service_env

THREADS = 2  # one wrk thread per process at most; the same for every run, for one load tool
Db = Path | PostgresUrl


def serve(db: Db, log: Path) -> Server:
    """A `projector serve` on `db`, answering /healthz."""
    target = db.url if isinstance(db, PostgresUrl) else str(db)
    env = service_env(Path(target), PROJECTOR_DB=target)
    server = Server([sys.executable, "-m", "projector.cli", "serve"], env, log)
    server.wait_ready("/healthz")
    return server


def wrk_spread(servers: list[Server], bodies: Path, seconds: float, pause_ms: int = 0) -> Figures:
    """wrk, 2 threads and 64 connections spread over `servers`; figures plus acked seqs."""
    with tempfile.TemporaryDirectory(prefix="projector-wrk-") as work:
        acks = Path(work) / "acks.txt"
        env = dict(
            os.environ,
            WRK_PORTS=",".join(str(s.port) for s in servers),
            WRK_THREADS=str(THREADS),
            WRK_ACKS=str(acks),
        )
        command = [
            "wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{round(seconds)}s",
            "-s", str(BENCH / "post_spread.lua"), servers[0].url, "--", str(bodies), str(pause_ms),
        ]  # fmt: skip
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        output = process.stdout.read().decode() if process.stdout else ""
        if status != 0:
            error = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"wrk failed: {output} {error}")
        figures: Figures = json.loads(output.strip().splitlines()[-1])
        figures["acked_seqs"] = [int(line) for line in acks.read_text().split()]
    if figures["requests"] and not figures["p99_ms"]:
        # wrk's coordinated-omission correction can add samples below its histogram's minimum,
        # and its percentile then finds no rank and says 0: not a figure, so none is kept.
        figures["p99_ms"] = None
    figures["load_cpu"] = round((usage.ru_utime + usage.ru_stime) / figures["seconds"], 3)
    return figures


def sent_bodies(bodies: Path, sent: list[int]) -> set[bytes]:
    """The bodies wrk sent: thread i took lines i, i + T, ..., `sent[i - 1]` of them."""
    out: set[bytes] = set()
    threads = len(sent)
    with bodies.open("rb") as lines:
        for number, line in enumerate(lines):
            thread = number % threads
            if number // threads < sent[thread]:
                out.add(line.rstrip(b"\n").split(b"\t", 1)[1])
    return out


def stored_bodies(db: Db, seqs: list[int]) -> dict[int, bytes]:
    """The body stored at each of `seqs` that exists in the log."""
    query = "SELECT seq, body FROM deliveries WHERE seq = ANY(%s)"
    if isinstance(db, PostgresUrl):
        with psycopg.connect(db.url) as conn:
            return {int(s): bytes(b) for s, b in conn.execute(query, (seqs,)).fetchall()}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT seq, body FROM deliveries").fetchall()
    wanted = set(seqs)
    return {int(s): bytes(b) for s, b in rows if s in wanted}


def lost(db: Db, acked: list[int], sent: set[bytes]) -> int:
    """Acknowledged deliveries not in the log: a seq acked twice, missing, or another body."""
    stored = stored_bodies(db, acked)
    missing = sum(1 for seq in set(acked) if stored.get(seq) not in sent)
    return missing + len(acked) - len(set(acked))


def verify(db: Db) -> bool:
    """Whether `projector verify` passes on the log."""
    target = db.url if isinstance(db, PostgresUrl) else str(db)
    done = subprocess.run(
        [sys.executable, "-m", "projector.cli", "verify"],
        env=service_env(Path(target), PROJECTOR_DB=target),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        print(f"projector verify FAILED on {db}:\n{done.stdout}{done.stderr}", flush=True)
    return done.returncode == 0


def scrape(servers: list[Server]) -> dict[str, float]:
    """Summed over `servers` from /metrics: rows and commits of the group commits, and the
    append time's p50 and p99 as the histogram's bucket bounds (the service's own view)."""
    totals: dict[str, float] = {}
    for server in servers:
        request = urllib.request.Request(f"{server.url}/metrics", headers=AUTH)
        with urllib.request.urlopen(request, timeout=10) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith(("projector_commit_batch_size_", "projector_append_seconds_")):
                    name, value = line.rsplit(" ", 1)
                    totals[name] = totals.get(name, 0.0) + float(value)
    figures = {
        "rows_per_commit": totals.get("projector_commit_batch_size_sum", 0.0)
        / max(1.0, totals.get("projector_commit_batch_size_count", 0.0))
    }
    buckets = sorted(
        (float(name.split('le="')[1].split('"')[0]), count)
        for name, count in totals.items()
        if name.startswith("projector_append_seconds_bucket")
    )
    total = totals.get("projector_append_seconds_count", 0.0)
    for label, share in (("append_p50_le_ms", 0.5), ("append_p99_le_ms", 0.99)):
        bound = next((le for le, count in buckets if total and count >= share * total), 0.0)
        figures[label] = bound * 1000
    return figures


def checked(db: Db, bodies: Path, figures: Figures) -> Figures:
    """`figures` with acked, lost and verified filled in (the servers are stopped by now)."""
    acked: list[int] = figures.pop("acked_seqs")
    figures["acked"] = len(acked)
    figures["lost"] = lost(db, acked, sent_bodies(bodies, figures.pop("sent")))
    figures["verified"] = verify(db)
    return figures


def ingest(db: Db, processes: int, bodies: Path, seconds: float, work: Path) -> Figures:
    """Full-rate ingest through `processes` service processes on one log."""
    servers = [serve(db, work / f"service-{n}.log") for n in range(processes)]
    try:
        figures = wrk_spread(servers, bodies, seconds)
        figures.update(scrape(servers))
    finally:
        for server in servers:
            server.stop()
    return checked(db, bodies, figures)


def folder_pid(url: PostgresUrl) -> int | None:
    """The process id of the lease holder (its owner is host:pid:nonce), if any holds it."""
    with psycopg.connect(url.url) as conn:
        row = conn.execute("SELECT owner FROM projector_lease WHERE lease_until > now()").fetchone()
    return None if row is None else int(str(row[0]).split(":")[1])


def lag_across(url: PostgresUrl, bodies: Path, rate: float, seconds: float, work: Path) -> Figures:
    """Two processes; load at `rate` to the one not folding; markers read back on both."""
    servers = [serve(url, work / f"lag-{n}.log") for n in range(2)]
    try:
        probes.wait_for(lambda: folder_pid(url) is not None, 30)
        folder = next(s for s in servers if s.process.pid == folder_pid(url))
        poster = next(s for s in servers if s is not folder)
        pause_ms = round(CONNECTIONS * 1000 / rate)
        on_folder = probes.LagProbe(poster.url, READ_TOKEN, read_url=folder.url)
        on_poster = probes.LagProbe(poster.url, READ_TOKEN)
        with on_folder, on_poster:
            figures = wrk_spread([poster], bodies, seconds, pause_ms)
        figures.update(scrape([poster]))
        still_folder = folder_pid(url) == folder.process.pid
    finally:
        for server in servers:
            server.stop()
    figures.update({f"{k}_folder": v for k, v in on_folder.figures().items()})
    figures.update({f"{k}_poster": v for k, v in on_poster.figures().items()})
    figures["offered_rate"] = rate
    figures["lease_kept"] = still_folder
    return checked(url, bodies, figures)


def as_numbers(figures: dict[str, Any]) -> dict[str, Any]:
    """Booleans as 0/1, so the summary's medians cover them (verified: 1 in every round)."""
    return {k: int(v) if isinstance(v, bool) else v for k, v in figures.items()}

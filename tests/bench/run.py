"""`make bench`: the service against its baselines, interleaved, in one run; prints one table.

python -m tests.bench.run [--rounds 3] [--seconds 5] [--log-size 1000000] [--only ingest,...]
Results go to bench-results/<timestamp>.json (git-ignored); BENCHMARKS.md explains them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench import probes
from tests.bench.workload import bench_log_name, build_log, write_signed
from tests.support import READ_TOKEN, REPO, free_port, service_env

BENCH = Path(__file__).resolve().parent
RESULTS = REPO / "bench-results"
CONNECTIONS = 64
SECTIONS = ("ingest", "rebuild", "queries")
# Where `projector` runs from: this checkout, or another one (--service-from) to measure
# the code before an optimisation against the code after it.
SERVICE_FROM = [REPO]

Figures = dict[str, Any]


class Server:
    """A server process on 127.0.0.1 (the service or a baseline), killed on exit."""

    def __init__(
        self, command: list[str], env: dict[str, str], log: Path, cwd: Path = REPO
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = time.perf_counter()
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)], env=env, cwd=cwd, stdout=out, stderr=out
            )

    def wait_ready(self, path: str = "/", timeout: float = 120) -> float:
        """Seconds from spawn until `path` answers at all (any HTTP status)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    if sock.recv(12).startswith(b"HTTP/1.1"):
                        return time.perf_counter() - self.started
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"server did not answer {path} in {timeout}s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def service(db: Path, log: Path) -> Server:
    env = service_env(db, PROJECTOR_LOG_FORMAT="json")
    return Server([sys.executable, "-m", "projector.cli", "serve"], env, log, SERVICE_FROM[0])


def baseline(kind: str, log: Path, db: Path | None = None) -> Server:
    extra = ["--db", str(db)] if db else []
    command = [sys.executable, "-m", "tests.bench.baselines", kind, *extra]
    return Server(command, service_env(db or log), log)


def wrk(
    url: str, script: str, args: list[str], seconds: float, server: Server | None = None
) -> Figures:
    """One wrk run (one thread, 64 connections); its figures plus the CPU wrk itself used,
    and with `server` the server's CPU per request (µs, all its threads)."""
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{round(seconds)}s", "-s", str(BENCH / script)]
    served = process_cpu(server.process.pid) if server else 0.0
    process = subprocess.Popen(
        [*command, url, "--", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    output = process.stdout.read().decode() if process.stdout else ""
    if status != 0:
        raise RuntimeError(f"wrk failed: {output}")
    figures: Figures = json.loads(output.strip().splitlines()[-1])
    figures["load_cpu"] = round((usage.ru_utime + usage.ru_stime) / figures["seconds"], 3)
    if server and figures["requests"]:
        served = process_cpu(server.process.pid) - served
        figures["server_cpu_us"] = served / figures["requests"] * 1e6
    return figures


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far, all threads."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_child(command: list[str], env: dict[str, str], cwd: Path = REPO) -> Figures:
    """Run a command to the end; its wall time, peak RSS and last JSON line if any."""
    start = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    output = process.stdout.read().decode() if process.stdout else ""
    if status != 0:
        raise RuntimeError(f"{command} failed: {output}")
    figures: Figures = {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024}
    last = output.strip().splitlines()[-1] if output.strip() else ""
    if last.startswith("{"):
        figures.update(json.loads(last))
    # wait4's usage covers the command and every child it waited for (the rebuild's second
    # process), so this is the CPU the whole command took, on however many cores.
    figures["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return figures


def ingest_round(work: Path, bodies: Path, seconds: float) -> dict[str, Figures]:
    """bare, its verify and parse ceilings, naive, service at full rate, then the service at
    half rate with lag probes."""
    post = "/webhooks/refold"
    out: dict[str, Figures] = {}
    for kind in ("bare", "verified", "parsed"):
        server = baseline(kind, work / f"{kind}.log")
        server.wait_ready()
        out[f"ingest_{kind}"] = wrk(server.url + post, "post.lua", [str(bodies)], seconds)
        server.stop()
    naive_db = work / "naive.sqlite3"
    naive = baseline("naive", work / "naive.log", naive_db)
    naive.wait_ready()
    out["ingest_naive"] = wrk(naive.url + post, "post.lua", [str(bodies)], seconds)
    naive.stop()
    db = work / "ingest.sqlite3"
    server = service(db, work / "service.log")
    server.wait_ready("/healthz")
    out["ingest_service"] = full = wrk(server.url + post, "post.lua", [str(bodies)], seconds)
    # Half the maximum: each connection pauses so 64 of them offer at most rate / 2 (each
    # answer's own latency comes on top of the pause, so the rate lands a little below).
    pause_ms = round(CONNECTIONS * 1000 / (full["rate"] / 2))
    with probes.LagProbe(server.url, READ_TOKEN) as lag:
        half = wrk(server.url + post, "post.lua", [str(bodies), str(pause_ms)], seconds)
    half.update(lag.figures())
    out["ingest_service_half"] = half
    server.stop()
    for path in work.glob("*.sqlite3*"):
        path.unlink()
    return out


def rebuild_round(logs: dict[int, Path], work: Path) -> dict[str, Figures]:
    out: dict[str, Figures] = {}
    largest = max(logs)
    for size, db in logs.items():
        scan = [sys.executable, "-m", "tests.bench.scan", str(db)]
        out[f"scan_{size}"] = per_core(timed_child(scan, dict(os.environ)), size)
        if size == largest:  # context: the same scan with the standard library's json.loads
            scanned = timed_child([*scan, "--parser", "json"], dict(os.environ))
            out[f"scan_json_{size}"] = per_core(scanned, size)
        rebuild = [sys.executable, "-m", "projector.cli", "rebuild"]
        rebuilt = timed_child(rebuild, service_env(db), SERVICE_FROM[0])
        rebuilt["rate"] = size / rebuilt["seconds"]
        out[f"rebuild_{size}"] = per_core(rebuilt, size)
    return out


def per_core(figures: Figures, deliveries: int) -> Figures:
    """Add deliveries per CPU second: the rate on one core, whatever processes ran."""
    figures["rate_per_core"] = deliveries / figures["cpu_seconds"]
    return figures


def query_round(db: Path, work: Path, seconds: float) -> dict[str, Figures]:
    out: dict[str, Figures] = {}
    bare = baseline("bare", work / "bare.log")
    bare.wait_ready()
    # Cold: 25,000 accounts in turn, more than a run reaches, so every answer is read from
    # the database. Hot: 200 accounts, answered from the answer cache after the first pass.
    cold, hot = "25000", "200"
    out["get_bare"] = wrk(bare.url, "get.lua", [READ_TOKEN, cold], seconds, bare)
    bare.stop()
    server = service(db, work / "service.log")
    out["startup"] = {"seconds": server.wait_ready("/healthz")}
    out["get_banner"] = wrk(server.url, "get.lua", [READ_TOKEN, cold], seconds, server)
    probes.write_etags(server.url, READ_TOKEN, work / "warm.txt", int(hot))  # warm the cache
    out["get_banner_hot"] = wrk(server.url, "get.lua", [READ_TOKEN, hot], seconds)
    etags = probes.write_etags(server.url, READ_TOKEN, work / "etags.txt", 2000)
    out["get_banner_304"] = wrk(server.url, "get.lua", [READ_TOKEN, cold, str(etags)], seconds)
    server.stop()
    # After the service: its start-up has made the read-model tables on a fresh log.
    naive = baseline("naive-read", work / "naive-read.log", db)
    naive.wait_ready()
    out["get_naive_read"] = wrk(naive.url, "get.lua", [READ_TOKEN, cold], seconds, naive)
    naive.stop()
    return out


def prepare_logs(size: int) -> dict[int, Path]:
    """The 1/4-size and full-size logs, built once and kept under bench-results/."""
    logs = {}
    for count in (size // 4, size):
        path = RESULTS / bench_log_name(count)
        if not path.exists():
            print(f"building a log of {count} deliveries (once; kept in {path.parent})", flush=True)
            build_log(path.with_suffix(".partial"), count)
            path.with_suffix(".partial").rename(path)
        logs[count] = path
    return logs


def write_report(
    module: str, argv: list[str] | None, name: str, machine_note: str = "", **figures: Any
) -> Path:
    """Write one bench run's figures as JSON under bench-results/ (`name` may hold {when}),
    stamped with when, on what machine and by which command."""
    when = datetime.now(UTC).isoformat(timespec="seconds")
    machine = (
        f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    report = {
        "when": when,
        "machine": f"{machine}; {machine_note}" if machine_note else machine,
        "command": " ".join([f"python -m {module}", *(argv or sys.argv[1:])]),
        **figures,
    }
    path = RESULTS / name.format(when=when.replace(":", ""))
    path.write_text(json.dumps(report, indent=1))
    return path


def summarise(rounds: list[dict[str, Figures]]) -> dict[str, dict[str, dict[str, float]]]:
    """For every run and figure: median, min and max across rounds."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name in rounds[0]:
        for figure, value in rounds[0][name].items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            values = sorted(r[name][figure] for r in rounds)
            median = values[len(values) // 2]
            summary.setdefault(name, {})[figure] = {
                "median": median,
                "min": values[0],
                "max": values[-1],
            }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5, help="per load run (default 5)")
    parser.add_argument("--log-size", type=int, default=1_000_000)
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run")
    parser.add_argument("--service-from", type=Path, help="run projector from this checkout")
    args = parser.parse_args(argv)
    if args.service_from:
        SERVICE_FROM[0] = args.service_from.resolve()
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed; install it (Debian: apt-get install wrk)")
        return 2
    sections = args.only.split(",")
    RESULTS.mkdir(exist_ok=True)
    work = RESULTS / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    bodies = RESULTS / "ingest-bodies.txt"
    if not bodies.exists():
        write_signed(bodies, 10_000_000, 400_000)  # far past the logs' numbers: distinct
    logs = prepare_logs(args.log_size) if {"rebuild", "queries"} & set(sections) else {}
    rounds: list[dict[str, Figures]] = []
    for number in range(1, args.rounds + 1):
        figures: dict[str, Figures] = {}
        if "ingest" in sections:
            figures.update(ingest_round(work, bodies, args.seconds))
        if "rebuild" in sections:
            figures.update(rebuild_round(logs, work))
        if "queries" in sections:
            figures.update(query_round(logs[args.log_size], work, args.seconds))
        rounds.append(figures)
        print(f"round {number}: {json.dumps(figures)}", flush=True)
    summary = summarise(rounds)
    path = write_report("tests.bench.run", argv, "{when}.json", rounds=rounds, summary=summary)
    print(probes.table(summary, rounds, args.log_size))
    print(f"\nwritten to {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ingest on a slow-fsync disk: naive and the service, with and without a 2 ms fsync.

python -m tests.bench.slow_fsync [--ms 2] [--rounds 3] [--seconds 5]
The delay comes from an LD_PRELOAD shim (slow_fsync.c beside this file, built with gcc into
bench-results/) given to every server; the kernel here has no device-mapper for `dm-delay`.
Each round runs naive, naive-serial and the service on this disk as it is (the shim at 0 ms
only counts flushes), then the three with the delay; the counts give deliveries per flush.
Results go to bench-results/<timestamp>-slow-fsync.json; BENCHMARKS.md explains them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.bench import probes
from tests.bench.run import BENCH, RESULTS, Figures, Server, summarise, write_report, wrk
from tests.bench.workload import write_signed
from tests.support import REPO, service_env

SOURCE = BENCH / "slow_fsync.c"
SHIM = RESULTS / "slow_fsync.so"
POST = "/webhooks/refold"
# Times one flush in a child process, so the shim is checked the way the servers load it.
FLUSH_PROBE = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
each = []
for _ in range(100):
    os.write(fd, b"x")
    start = time.perf_counter()
    os.fdatasync(fd)
    each.append((time.perf_counter() - start) * 1000)
print(sum(each) / len(each), min(each))  # ms per flush: mean, fastest
"""


def build_shim() -> Path:
    """Compile the shim into bench-results/ (again only when its source changed)."""
    if SHIM.exists() and SHIM.stat().st_mtime >= SOURCE.stat().st_mtime:
        return SHIM
    command = ["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", str(SHIM), str(SOURCE), "-ldl"]
    subprocess.run(command, check=True)
    return SHIM


def shim_env(ms: float, count_to: Path | None = None) -> dict[str, str]:
    env = {"LD_PRELOAD": str(SHIM), "SLOW_FSYNC_MS": str(ms)}
    if count_to is not None:
        env["SLOW_FSYNC_COUNT_TO"] = str(count_to)
    return env


def flushes_in(count_to: Path) -> int:
    """Flushes counted by the shim, summed over every process that wrote to `count_to`."""
    lines = count_to.read_text().split() if count_to.exists() else []
    return sum(int(count) for count in lines[1::2])


def flush_ms(work: Path, extra: dict[str, str]) -> tuple[float, float]:
    """Milliseconds per fdatasync over 100 of them (mean, fastest), in a child with `extra`."""
    env = {**os.environ, **extra}
    command = [sys.executable, "-c", FLUSH_PROBE, str(work / "flush-probe")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    mean, fastest = done.stdout.split()
    return float(mean), float(fastest)


def check_shim(work: Path, ms: float) -> Figures:
    """The flush cost with and without the shim; refuses to go on if the shim did not work."""
    plain, slow = flush_ms(work, {}), flush_ms(work, shim_env(ms))
    print(
        f"100 flushes: {plain[0]:.2f} ms each on this disk (fastest {plain[1]:.2f}), "
        f"{slow[0]:.2f} ms with the shim (fastest {slow[1]:.2f})"
    )
    counted = work / "flush-probe.count"
    flush_ms(work, shim_env(0, counted))
    # The disk's own flush time wanders with other load, so the fastest flush is the check:
    # with the shim, none can be quicker than the delay, and every one must be counted.
    if slow[1] < ms or flushes_in(counted) < 100:
        raise SystemExit(
            f"slow_fsync: with the shim the fastest flush took {slow[1]:.2f} ms (not >= {ms} ms)"
            f" and {flushes_in(counted)} of 100 were counted; check that {SHIM} loads"
            " (LD_PRELOAD) and that gcc built it for this machine"
        )
    return {
        "flush_ms_plain": plain[0],
        "flush_ms_plain_fastest": plain[1],
        "flush_ms_slow": slow[0],
        "flush_ms_slow_fastest": slow[1],
    }


def baseline(kind: str) -> Callable[[Path, dict[str, str]], Server]:
    """A starter for one of tests.bench.baselines' storing kinds, on its own database."""

    def start(work: Path, extra: dict[str, str]) -> Server:
        db, log = work / f"{kind}.sqlite3", work / f"{kind}.log"
        command = [sys.executable, "-m", "tests.bench.baselines", kind, "--db", str(db)]
        return Server(command, service_env(db, **extra), log)

    return start


def service(work: Path, extra: dict[str, str]) -> Server:
    db, log = work / "ingest.sqlite3", work / "service.log"
    env = service_env(db, PROJECTOR_LOG_FORMAT="json", **extra)
    return Server([sys.executable, "-m", "projector.cli", "serve"], env, log)


def ingest_runs(work: Path, bodies: Path, seconds: float, ms: float) -> dict[str, Figures]:
    """naive, naive-serial, then the service, each on a fresh database, flushes delayed `ms`."""
    suffix = "slow" if ms else "plain"
    out: dict[str, Figures] = {}
    for name, start, ready in (
        ("naive", baseline("naive"), "/"),
        ("naive_serial", baseline("naive-serial"), "/"),
        ("service", service, "/healthz"),
    ):
        count_to = work / f"{name}.count"
        count_to.unlink(missing_ok=True)
        server = start(work, shim_env(ms, count_to))
        server.wait_ready(ready)
        figures = wrk(server.url + POST, "post.lua", [str(bodies)], seconds)
        server.stop()  # SIGTERM: the servers exit normally, so the shim writes its count
        # Start-up and shutdown flushes are counted too: a few against thousands.
        figures["flushes"] = flushes = flushes_in(count_to)
        figures["deliveries_per_flush"] = figures["requests"] / flushes if flushes else 0.0
        out[f"ingest_{name}_{suffix}"] = figures
        for path in work.glob("*.sqlite3*"):
            path.unlink()
    return out


def table(summary: dict[str, Figures], rounds: list[dict[str, Figures]], ms: float) -> str:
    lines = [f"{'run':26} {'figure':20} {'median':>10} {'min':>10} {'max':>10}"]
    for run, figures in summary.items():
        for figure in ("rate", "p50_ms", "p99_ms", "deliveries_per_flush"):
            if figure in figures:
                v = figures[figure]
                lines.append(
                    f"{run:26} {figure:20} {v['median']:10.2f} {v['min']:10.2f} {v['max']:10.2f}"
                )
    lines.append("")
    lines.append(f"{'headline ratio':44} {'target':>8}   median ratio (each round's ratio)")
    for label, suffix, target in (
        ("ingest service / naive, this disk", "plain", ">= 1.5"),
        # The target is set for a 2 ms flush; other delays are context.
        (f"ingest service / naive, {ms:g} ms fsync", "slow", ">= 10" if ms == 2 else "-"),
    ):
        service, baseline = (f"ingest_service_{suffix}", "rate"), (f"ingest_naive_{suffix}", "rate")
        ratio = probes.ratio(summary, rounds, service, baseline)
        lines.append(f"{label:44} {target:>8}   {ratio}")
        # Context, not a target: against a naive that really flushes once per delivery.
        serial = (f"ingest_naive_serial_{suffix}", "rate")
        ratio = probes.ratio(summary, rounds, service, serial)
        lines.append(f"{label.replace('naive', 'naive-serial'):44} {'-':>8}   {ratio}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ms", type=float, default=2.0, help="added to each flush (default 2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5, help="per load run (default 5)")
    args = parser.parse_args(argv)
    for tool, package in (("wrk", "wrk"), ("gcc", "gcc")):
        if shutil.which(tool) is None:
            print(
                f"slow_fsync: {tool} is not installed; install it (Debian: apt-get install "
                f"{package})"
            )
            return 2
    RESULTS.mkdir(exist_ok=True)
    work = RESULTS / "work-slow-fsync"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    bodies = RESULTS / "ingest-bodies.txt"
    if not bodies.exists():
        write_signed(bodies, 10_000_000, 400_000)  # the same bodies as tests.bench.run
    build_shim()
    flushes = check_shim(work, args.ms)
    rounds: list[dict[str, Figures]] = []
    for number in range(1, args.rounds + 1):
        figures = ingest_runs(work, bodies, args.seconds, 0)
        figures.update(ingest_runs(work, bodies, args.seconds, args.ms))
        rounds.append(figures)
        print(f"round {number}: {json.dumps(figures)}", flush=True)
    summary = summarise(rounds)
    path = write_report(
        "tests.bench.slow_fsync",
        argv,
        "{when}-slow-fsync.json",
        flush_check=flushes,
        rounds=rounds,
        summary=summary,
    )
    print(table(summary, rounds, args.ms))
    print(f"\nwritten to {path.relative_to(REPO)}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Issue 13's figures: ingest of `serve --workers 2` against 2 bare processes and 1 worker.

bare1 / bare2: the bare baseline as 1 process, or 2 sharing the port (SO_REUSEPORT).
service1 / service2: `projector serve`, and `projector serve --workers 2` (on SQLite: two
HTTP workers and the writer process). Interleaved, each round runs all four in turn.
python -m tests.bench.workers [--rounds 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.bench.run import RESULTS, SERVICE_FROM, Figures, wrk
from tests.bench.workload import write_signed
from tests.support import REPO, free_port, service_env

RUNS = ("bare1", "bare2", "service1", "service2")


class Processes:
    """Server processes sharing one port on 127.0.0.1; each writes `listening` once up."""

    def __init__(self, commands: list[list[str]], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:
            self.processes = [
                subprocess.Popen(
                    [*command, "--port", str(self.port)],
                    env=env,
                    cwd=SERVICE_FROM[0] if "projector.cli" in command else REPO,
                    stdout=out,
                    stderr=out,
                )
                for command in commands
            ]

    def wait_listening(self, count: int, marker: str, timeout: float = 120) -> None:
        """Until `marker` is logged `count` times: else wrk's connections favour the first."""
        deadline = time.monotonic() + timeout
        while self.log.read_text(errors="replace").count(marker) < count:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"not listening:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """CPU time used so far by these processes and their children (the supervisor's)."""
        pids = [p.pid for p in self.processes]
        for pid in list(pids):
            children = Path(f"/proc/{pid}/task/{pid}/children")
            pids += [int(child) for child in children.read_text().split()]
        total = 0.0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(60)


def start(run: str, work: Path) -> Processes:
    log = work / f"{run}.log"
    if run.startswith("bare"):
        n = int(run[-1])
        bare = [sys.executable, "-m", "tests.bench.baselines", "bare", "--reuse-port"]
        server = Processes([bare] * n, service_env(log), log)
        server.wait_listening(n, "listening")  # each prints just that
        return server
    db = work / f"{run}.sqlite3"
    serve = [sys.executable, "-m", "projector.cli", "serve"]
    workers = int(run[-1])
    if workers > 1:
        serve += ["--workers", str(workers)]
    server = Processes([serve], service_env(db, PROJECTOR_LOG_FORMAT="json"), log)
    # Only each HTTP process's `listening` line names its event loop.
    server.wait_listening(workers, '"event_loop"')
    return server


def workers_round(work: Path, bodies: Path, seconds: float) -> dict[str, Figures]:
    """One run of each of RUNS, in turn, on fresh databases."""
    out: dict[str, Figures] = {}
    for run in RUNS:
        server = start(run, work)
        try:
            url = f"{server.url}/webhooks/refold"
            before = server.cpu_seconds()
            figures = wrk(url, "post.lua", [str(bodies)], seconds)
            used = server.cpu_seconds() - before
            # On a shared machine the rate follows the neighbours; CPU per delivery less so.
            figures["server_cpu"] = round(used / figures["seconds"], 3)
            figures["cpu_ms_per_delivery"] = round(1000 * used / max(figures["requests"], 1), 4)
            out[f"workers_{run}"] = figures
        finally:
            server.stop()
        for path in work.glob(f"{run}.sqlite3*"):
            path.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args(argv)
    work = RESULTS / "work-workers"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    bodies = RESULTS / "ingest-bodies.txt"
    if not bodies.exists():
        write_signed(bodies, 10_000_000, 400_000)
    rounds = []
    for number in range(1, args.rounds + 1):
        figures = workers_round(work, bodies, args.seconds)
        rounds.append(figures)
        rates = {run: figures[f"workers_{run}"]["rate"] for run in RUNS}
        cpu = {run: figures[f"workers_{run}"]["cpu_ms_per_delivery"] for run in RUNS}
        print(
            f"round {number}: "
            + ", ".join(f"{run} {rates[run]:.0f}/s {cpu[run]:.3f} cpu-ms" for run in RUNS)
            + f"; service2/service1 {rates['service2'] / rates['service1']:.2f}, "
            f"bare2/bare1 {rates['bare2'] / rates['bare1']:.2f}, "
            f"service2/bare2 {rates['service2'] / rates['bare2']:.2f}, "
            f"service1/bare1 {rates['service1'] / rates['bare1']:.2f}",
            flush=True,
        )
        print(json.dumps(figures), flush=True)
    for run in RUNS:
        for figure in ("rate", "cpu_ms_per_delivery", "server_cpu", "p99_ms"):
            values = sorted(r[f"workers_{run}"][figure] for r in rounds)
            low, median, high = values[0], values[len(values) // 2], values[-1]
            print(f"median {run} {figure}: {median:g} (min {low:g}, max {high:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

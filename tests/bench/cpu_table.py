"""The per-component CPU table: µs of CPU per delivery, per thread, at full ingest load.

python -m tests.bench.cpu_table [--seconds 20] [--rounds 1] [--before DIR]
Starts the service (as `make bench` does), drives it with wrk's post.lua at full load
(64 connections), and over a window of `--seconds` takes:
- each thread's CPU seconds from /proc/PID/task/TID/stat (user + system);
- the deliveries stored, from the log's highest seq at both ends of the window;
- two py-spy recordings of the same window, side by side:
  `py-spy record --pid P --rate 250 --duration S --format raw --threads --nonblocking`
  samples every thread py-spy finds active (not idle in epoll or on a lock), so each
  component's share of a thread's samples, times the thread's /proc CPU, is the
  component's CPU; SQLite's time is charged to the Python call that ran the statement.
  The same command with `--gil` records only the thread holding the GIL:
  the Python work alone, in wall-clock time (on a loaded machine a thread can hold the GIL
  while the kernel has it off the CPU, so these run higher than CPU; read them as shares).
  `--nonblocking` reads the stacks without pausing the service, which would slow it by
  each pause. `--native` is left out: py-spy refuses it with --nonblocking, and blocking
  native sampling fell seconds behind at 250 Hz on this 2-core machine.
Samples are mapped to components by tests/bench/cpu_components.py. With `--before DIR`
the service alternates between DIR's checkout and this one (before, after, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench import cpu_components
from tests.bench.cpu_components import LOOP, OTHER, WRITER
from tests.bench.run import BENCH, CONNECTIONS, RESULTS, SERVICE_FROM, baseline, service
from tests.bench.workload import write_signed

RATE = 250  # samples a second: py-spy's own default is 100
KINDS = ("cpu", "gil")  # the two recordings: running threads; the GIL holder
WARM_UP = 3.0  # seconds of load before the window opens
PY_SPY = Path(sys.executable).parent / "py-spy"
TICK = os.sysconf("SC_CLK_TCK")


def py_spy_command(pid: int, seconds: int, output: Path, gil: bool) -> list[str]:
    return [
        str(PY_SPY), "record", "--pid", str(pid), "--rate", str(RATE),
        "--duration", str(seconds), "--format", "raw", "--threads", "--nonblocking",
        *(["--gil"] if gil else []), "--output", str(output),
    ]  # fmt: skip


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each of the process's threads, by OS thread id."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def highest_seq(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT coalesce(max(seq), 0) FROM deliveries").fetchone()[0])


def start_wrk(url: str, bodies: Path, seconds: float) -> subprocess.Popen[bytes]:
    command = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{round(seconds)}s"]
    script = ["-s", str(BENCH / "post.lua"), url + "/webhooks/refold", "--", str(bodies)]
    return subprocess.Popen([*command, *script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wrk_figures(process: subprocess.Popen[bytes]) -> dict[str, Any]:
    output, _ = process.communicate()
    figures: dict[str, Any] = json.loads(output.decode().strip().splitlines()[-1])
    return figures


def measure_service(work: Path, bodies: Path, seconds: int) -> dict[str, Any]:
    """One full-load window on the service: per-thread CPU, deliveries, py-spy samples."""
    db = work / "cpu.sqlite3"
    for stale in work.glob("cpu.sqlite3*"):
        stale.unlink()
    server = service(db, work / "service.log")
    try:
        server.wait_ready("/healthz")
        pid = server.process.pid
        load = start_wrk(server.url, bodies, WARM_UP + seconds + 3)
        time.sleep(WARM_UP)
        commands = [py_spy_command(pid, seconds, work / f"{k}.raw", k == "gil") for k in KINDS]
        cpu0, seq0, t0 = thread_cpu(pid), highest_seq(db), time.perf_counter()
        spies = [
            subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands
        ]
        said = [spy.communicate()[1].decode() for spy in spies]
        cpu1, seq1, t1 = thread_cpu(pid), highest_seq(db), time.perf_counter()
        wrk = wrk_figures(load)
    finally:
        server.stop()
    for spy, text in zip(spies, said, strict=True):
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed ({spy.returncode}): {text.strip()}")
    samples = {k: cpu_components.read_raw(work / f"{k}.raw") for k in KINDS}
    per_second = (seq1 - seq0) / (t1 - t0)
    cpu_us: dict[str, float] = {}
    for tid, used in cpu1.items():
        kind = next((k for k, ids in samples["cpu"].tids.items() if tid in ids), OTHER)
        kind = LOOP if tid == pid else kind
        cpu_us[kind] = (
            cpu_us.get(kind, 0.0) + (used - cpu0.get(tid, 0.0)) / (t1 - t0) / per_second * 1e6
        )
    # py-spy's window is `seconds`; ours also holds its start-up and exit, at the same rate.
    sampled = per_second * seconds
    return {
        "deliveries_per_second": per_second,
        "wrk": wrk,
        "py_spy": [" ".join(c) for c in commands],
        "py_spy_said": [line for text in said for line in text.splitlines() if "behind" in line],
        "cpu_us": cpu_us,
        "components_us": {
            thread: {
                name: cpu_us.get(thread, 0.0) * n / samples["cpu"].total(thread)
                for name, n in counts.items()
            }
            for thread, counts in samples["cpu"].counts.items()
        },
        "gil_us": {
            thread: {name: n / RATE / sampled * 1e6 for name, n in counts.items()}
            for thread, counts in samples["gil"].counts.items()
        },
    }


def measure_bare(work: Path, bodies: Path, seconds: int) -> float:
    """µs of CPU per delivery of the bare baseline at full load (context for the table)."""
    server = baseline("bare", work / "bare.log")
    try:
        server.wait_ready()
        load = start_wrk(server.url, bodies, WARM_UP + seconds)
        time.sleep(WARM_UP)
        start = sum(thread_cpu(server.process.pid).values())
        time.sleep(seconds - 1)
        used = sum(thread_cpu(server.process.pid).values()) - start
        rate = float(wrk_figures(load)["rate"])
    finally:
        server.stop()
    return used / (seconds - 1) / rate * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=20, help="window per run (default 20)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--before", type=Path, help="also run the service from this checkout")
    args = parser.parse_args(argv)
    if not PY_SPY.exists():
        print(f"cpu_table: py-spy is not installed beside {sys.executable}; pip install py-spy")
        return 2
    RESULTS.mkdir(exist_ok=True)
    bodies = RESULTS / "ingest-bodies.txt"
    if not bodies.exists():
        write_signed(bodies, 10_000_000, 400_000)
    here = SERVICE_FROM[0]
    sides = [("before", args.before.resolve()), ("after", here)] if args.before else []
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cpu-table-") as scratch:
        work = Path(scratch)
        for number in range(1, args.rounds + 1):
            for label, checkout in sides or [("this", here)]:
                SERVICE_FROM[0] = checkout
                run = measure_service(work, bodies, args.seconds)
                run.update(label=label, round=number, checkout=str(checkout))
                run["bare_cpu_us"] = measure_bare(work, bodies, min(args.seconds, 10))
                runs.append(run)
                print(json.dumps(run), flush=True)
    SERVICE_FROM[0] = here
    path = RESULTS / f"cpu-table-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(runs, indent=1))
    print(render(runs))
    print(f"\nwritten to {path}")
    return 0


def _median(values: list[float]) -> float:
    ordered, middle = sorted(values), len(values) // 2
    if not ordered:
        return 0.0
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def render(runs: list[dict[str, Any]]) -> str:
    """µs per delivery, median over each side's rounds: CPU by component (shares of each
    thread's /proc CPU), and beside it the same component's time holding the GIL."""
    labels = list(dict.fromkeys(r["label"] for r in runs))
    by = {label: [r for r in runs if r["label"] == label] for label in labels}
    lines = [f"py-spy: {command}" for command in runs[0]["py_spy"]]
    heads = [f"{x} CPU" for x in labels] + [f"{x} GIL" for x in labels]
    lines += ["", f"{'µs per delivery':44}" + "".join(f"{h:>13}" for h in heads)]

    def row(name: str, cpu: Any, gil: Any = None) -> None:
        cells = [_median([cpu(r) for r in by[x]]) for x in labels]
        if gil is not None:
            cells += [_median([gil(r) for r in by[x]]) for x in labels]
        lines.append(f"{name:44}" + "".join(f"{c:13.1f}" for c in cells))

    row("deliveries/s in the window", lambda r: r["deliveries_per_second"])
    row("bare baseline, whole process", lambda r: r["bare_cpu_us"])
    row("service, whole process", lambda r: sum(r["cpu_us"].values()))
    for thread in (LOOP, WRITER, OTHER):
        row(
            thread,
            lambda r, t=thread: r["cpu_us"].get(t, 0.0),
            lambda r, t=thread: sum(r["gil_us"].get(t, {}).values()),
        )
        names = {
            n for r in runs for part in ("components_us", "gil_us") for n in r[part].get(thread, {})
        }
        order = sorted(
            names, key=lambda n: -_median([_get(r, "components_us", thread, n) for r in runs])
        )
        for name in order:
            row(
                f"  {name}",
                lambda r, t=thread, n=name: _get(r, "components_us", t, n),
                lambda r, t=thread, n=name: _get(r, "gil_us", t, n),
            )
    return "\n".join(lines)


def _get(run: dict[str, Any], part: str, thread: str, name: str) -> float:
    return float(run[part].get(thread, {}).get(name, 0.0))


if __name__ == "__main__":
    sys.exit(main())

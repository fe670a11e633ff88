"""`projector copy`'s rate: a large log SQLite -> PostgreSQL and back, medians of a few runs.

python -m tests.bench.copy_rate [--deliveries 100000] [--runs 3]
Needs a PostgreSQL server (PROJECTOR_TEST_POSTGRES, as the tests); prints one table.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.workload import build_log
from tests.postgres_support import fresh_database
from tests.support import run_cli, service_env

COPIED = re.compile(
    r"copied (\d+) rows in ([\d.]+) s \(([\d,]+) rows/s\); "
    r"read models rebuilt from the copied log in ([\d.]+) s"
)


def copy_once(source: str, destination: str) -> tuple[float, float, float]:
    """One `projector copy` as a user runs it: (rows/s of the copy, copy s, rebuild s)."""
    started = time.perf_counter()
    result = run_cli("copy", source, destination, env=service_env(Path("unused")), timeout=3600)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"copy {source} -> {destination} failed:\n{result.stderr}")
    found = COPIED.search(result.stdout)
    if found is None:
        sys.exit(f"no 'copied ...' line in:\n{result.stdout}")
    rows, seconds, _, rebuild = found.groups()
    print(f"  {rows} rows: copy {seconds} s, rebuild {rebuild} s, whole command {wall:.1f} s")
    return int(rows) / float(seconds), float(seconds), float(rebuild)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "source.sqlite3"
        print(f"building a log of {args.deliveries} deliveries ...")
        build_log(source, args.deliveries)
        results: dict[str, list[tuple[float, float, float]]] = {"to": [], "back": []}
        for run in range(args.runs):
            with fresh_database() as url:
                print(f"run {run + 1}: SQLite -> PostgreSQL")
                results["to"].append(copy_once(str(source), url.url))
                back = Path(folder) / f"back-{run}.sqlite3"
                print(f"run {run + 1}: PostgreSQL -> SQLite")
                results["back"].append(copy_once(url.url, str(back)))
                back.unlink()
    print(f"\n{args.deliveries} deliveries, median of {args.runs} runs")
    print(f"{'direction':<22}{'rows/s':>10}{'copy s':>10}{'rebuild s':>12}")
    for name, label in (("to", "SQLite -> PostgreSQL"), ("back", "PostgreSQL -> SQLite")):
        rate, seconds, rebuild = (statistics.median(r[i] for r in results[name]) for i in range(3))
        print(f"{label:<22}{rate:>10,.0f}{seconds:>10.1f}{rebuild:>12.1f}")


if __name__ == "__main__":
    main()

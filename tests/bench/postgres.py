"""The PostgreSQL benchmarks: pgbench ceilings, ingest on 1 and 2 processes against SQLite,
projection lag across processes, projector failover, and rebuild against SQLite.

python -m tests.bench.postgres [--rounds 3] [--seconds 5] [--failovers 5] [--rebuild-size N]
Every database is a fresh one named projector_bench_*, created on the server at
PROJECTOR_TEST_POSTGRES and dropped after. Results go to bench-results/postgres-<when>.json;
BENCHMARKS.md ("PostgreSQL") explains them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from projector.storage.location import PostgresUrl
from projector.storage.postgres import schema
from projector.storage.postgres.connect import connect
from tests.bench import pg_ceiling, pg_failover, pg_rebuild, pg_service, pg_table
from tests.bench.run import RESULTS, Figures, write_report
from tests.bench.workload import write_signed
from tests.postgres_support import ADMIN_URL, scratch_database

SECTIONS = ("ceiling", "ingest", "lag", "failover", "rebuild")
MACHINE = "2 cores shared by PostgreSQL, the service processes and the load generator"


def server_problem() -> str | None:
    """Why no PostgreSQL server answers at PROJECTOR_TEST_POSTGRES; None when one does."""
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@contextmanager
def bench_database() -> Iterator[PostgresUrl]:
    """A new database of our own (projector_bench_*), dropped with its connections after."""
    with scratch_database("projector_bench_") as url:
        yield url


async def _migrate(url: PostgresUrl) -> None:
    conn = await connect(url)
    try:
        await schema.migrate(conn)
    finally:
        await conn.close()


def ceiling_round(seconds: float) -> dict[str, Figures]:
    with bench_database() as url:
        asyncio.run(_migrate(url))  # the service's own table, indexes and triggers
        with psycopg.connect(url.url, autocommit=True) as conn:
            pg_ceiling.prepare(conn)
        return pg_ceiling.ceiling_round(url.url, seconds)


def ingest_round(bodies: Path, seconds: float, work: Path) -> dict[str, Figures]:
    """SQLite, then 1 and 2 processes on PostgreSQL, each on a fresh log."""
    out: dict[str, Figures] = {}
    sqlite_db = work / "ingest.sqlite3"
    out["ingest_sqlite_1p"] = pg_service.ingest(sqlite_db, 1, bodies, seconds, work)
    for path in work.glob("ingest.sqlite3*"):
        path.unlink()
    for processes in (1, 2):
        with bench_database() as url:
            figures = pg_service.ingest(url, processes, bodies, seconds, work)
        out[f"ingest_pg_{processes}p"] = figures
    return out


def lag_round(bodies: Path, rate: float, seconds: float, work: Path) -> dict[str, Figures]:
    with bench_database() as url:
        return {"lag_pg_2p": pg_service.lag_across(url, bodies, rate, seconds, work)}


def failover_run(runs: int, work: Path) -> dict[str, Figures]:
    with bench_database() as url:
        return {"failover": pg_failover.failover(url, runs, work)}


def rebuild_run(size: int) -> dict[str, Figures]:
    """The bench's SQLite log of `size`, copied into PostgreSQL; `projector rebuild` on each."""
    log = pg_rebuild.bench_log(size)
    out = {f"rebuild_sqlite_{size}": pg_rebuild.rebuild(log, size)}
    with bench_database() as url:
        print(f"copying the {size}-delivery log into PostgreSQL", flush=True)
        out[f"copy_pg_{size}"] = pg_rebuild.copy_log(log, url)
        out[f"rebuild_pg_{size}"] = pg_rebuild.rebuild(url, size)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of ceiling/ingest/lag")
    parser.add_argument("--seconds", type=float, default=5, help="per load run (default 5)")
    parser.add_argument("--failovers", type=int, default=5, help="kills of the folding process")
    parser.add_argument(
        "--rebuild-size",
        type=int,
        default=250_000,
        choices=(250_000, 1_000_000),
        help="deliveries in the rebuilt log (1,000,000 takes several minutes more)",
    )
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run")
    parser.add_argument(
        "--if-server",
        action="store_true",
        help="when no PostgreSQL server answers, say so and exit 0 (for `make bench`)",
    )
    args = parser.parse_args(argv)
    problem = server_problem()
    if problem is not None:
        print(
            f"bench: no PostgreSQL server answers at PROJECTOR_TEST_POSTGRES ({problem}); set it "
            "to the URL of a user who may create databases to run the PostgreSQL benchmarks"
        )
        return 0 if args.if_server else 2
    if shutil.which("wrk") is None or shutil.which("pgbench") is None:
        print("bench: wrk and pgbench are needed (Debian: apt-get install wrk postgresql-client)")
        return 2
    sections = set(args.only.split(","))
    RESULTS.mkdir(exist_ok=True)
    work = RESULTS / "work-postgres"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    bodies = RESULTS / "ingest-bodies.txt"
    if not bodies.exists():
        write_signed(bodies, 10_000_000, 400_000)  # far past the logs' numbers: distinct
    rounds: list[dict[str, Figures]] = []
    for number in range(1, args.rounds + 1):
        figures: dict[str, Figures] = {}
        if "ceiling" in sections:
            figures.update(ceiling_round(args.seconds))
        if "ingest" in sections:
            figures.update(ingest_round(bodies, args.seconds, work))
        if "lag" in sections:
            # Half the maximum: of one PostgreSQL process, measured in this round.
            full = figures.get("ingest_pg_1p", {}).get("rate", 2000.0)
            figures.update(lag_round(bodies, full / 2, args.seconds, work))
        rounds.append({name: pg_service.as_numbers(f) for name, f in figures.items()})
        print(f"round {number}: {json.dumps(figures)}", flush=True)
    once: dict[str, Figures] = {}
    if "failover" in sections:
        once.update(failover_run(args.failovers, work))
    if "rebuild" in sections:
        once.update(rebuild_run(args.rebuild_size))
    once = {name: pg_service.as_numbers(f) for name, f in once.items()}
    summary = pg_table.summarise(rounds) if rounds and rounds[0] else {}
    path = write_report(
        "tests.bench.postgres",
        argv,
        "postgres-{when}.json",
        MACHINE,
        rounds=rounds,
        summary=summary,
        once=once,
    )
    print(pg_table.table(summary, rounds, once, MACHINE))
    print(f"\nwritten to {path.relative_to(RESULTS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

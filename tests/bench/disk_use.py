"""Bytes on disk per delivery: the log, its indexes and the read models, on both engines.

python -m tests.bench.disk_use [--deliveries 200000] [--postgres | --if-server]
Builds a log of the bench workload (bodies signed, headers kept as the receiver keeps them),
folds it (`projector rebuild`), then sums each table's and index's pages: SQLite's `dbstat`
(pages in use, unused space within them included), PostgreSQL's relation sizes after a copy
of the same log and a rebuild. Prints a table; BENCHMARKS.md "Bytes per delivery" explains it.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
from pathlib import Path

import psycopg

from projector.readmodels import READ_MODELS
from projector.storage.location import PostgresUrl
from projector.storage.postgres.schema import SCHEMA_VERSION
from projector.storage.sqlite.log import LOG_SCHEMA_VERSION
from tests.bench.pg_rebuild import copy_log, rebuild
from tests.bench.workload import build_log

# Each object's part: the log table, the log's indexes, the read models (and theirs), the rest.
READ_MODEL_TABLES = tuple(model.table for model in READ_MODELS)
Sizes = dict[str, int]


def part_of(table: str, is_index: bool) -> str:
    """The part of the total an object of `table` counts in."""
    if table == "deliveries":
        return "log indexes" if is_index else "log table"
    if table in READ_MODEL_TABLES:
        return "read models"
    return "other"


def sqlite_objects(path: Path) -> tuple[dict[str, tuple[str, int]], int]:
    """Each table's and index's part and bytes (pages in use), and the raw body bytes."""
    conn = sqlite3.connect(path)
    try:
        owners = {
            name: (table, kind == "index")
            for name, table, kind in conn.execute("SELECT name, tbl_name, type FROM sqlite_master")
        }
        objects = {}
        for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
            table, is_index = owners.get(name, (name, False))
            objects[name] = (part_of(table, is_index), int(size))
        (raw,) = conn.execute("SELECT sum(length(body)) FROM deliveries").fetchone()
        return objects, int(raw)
    finally:
        conn.close()


_PG_OBJECTS = """
SELECT c.relname, coalesce(t.relname, c.relname), c.relkind = 'i',
    CASE WHEN c.relkind = 'i' THEN pg_relation_size(c.oid) ELSE pg_table_size(c.oid) END
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_index AS i ON i.indexrelid = c.oid LEFT JOIN pg_class AS t ON t.oid = i.indrelid
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')
"""


def postgres_objects(url: PostgresUrl) -> tuple[dict[str, tuple[str, int]], int]:
    """Each table's (with its TOAST, free space and visibility maps) and index's part and bytes."""
    with psycopg.connect(url.url, autocommit=True) as conn:
        # VACUUM first: every table then has its maps, as it would after autovacuum.
        conn.execute("VACUUM")
        objects = {
            name: (part_of(table, is_index), int(size))
            for name, table, is_index, size in conn.execute(_PG_OBJECTS).fetchall()
        }
        row = conn.execute("SELECT sum(length(body)) FROM deliveries").fetchone()
        return objects, int(row[0]) if row else 0


def table(engine: str, deliveries: int, objects: dict[str, tuple[str, int]], raw: int) -> str:
    """The objects, then each part and the total, in bytes and bytes per delivery."""
    lines = [f"{engine}: {deliveries} deliveries"]
    lines.append(f"  {'object':<44} {'part':<12} {'bytes':>12} {'B/delivery':>11}")
    for name, (part, size) in sorted(objects.items(), key=lambda item: -item[1][1]):
        lines.append(f"  {name:<44} {part:<12} {size:>12,} {size / deliveries:>11.1f}")
    parts: Sizes = {}
    for part, size in objects.values():
        parts[part] = parts.get(part, 0) + size
    total = sum(parts.values())
    lines.append("  " + "-" * 82)
    for part in ("log table", "log indexes", "read models", "other"):
        size = parts.get(part, 0)
        lines.append(f"  {part:<57} {size:>12,} {size / deliveries:>11.1f}")
    lines.append(f"  {'total':<57} {total:>12,} {total / deliveries:>11.1f}")
    lines.append(f"  {'raw body bytes':<57} {raw:>12,} {raw / deliveries:>11.1f}")
    lines.append(f"  total / raw body bytes: {total / raw:.2f}")
    return "\n".join(lines)


def measure_sqlite(work: Path, deliveries: int) -> Path:
    """Build and fold the log in `work`; print its table; return its path."""
    path = work / "log.sqlite3"
    build_log(path, deliveries, signed=True)
    rebuild(path, deliveries)
    objects, raw = sqlite_objects(path)
    size = path.stat().st_size
    print(table(f"SQLite (log schema v{LOG_SCHEMA_VERSION})", deliveries, objects, raw))
    print(f"  file size {size:,} B ({size / deliveries:.1f} B/delivery; the rest is free pages)")
    return path


def measure_postgres(source: Path, deliveries: int) -> None:
    """Copy the log at `source` into a fresh PostgreSQL database, fold it, print its table."""
    from tests.bench.postgres import bench_database

    with bench_database() as url:
        copy_log(source, url)
        rebuild(url, deliveries)
        objects, raw = postgres_objects(url)
        print(table(f"PostgreSQL (schema v{SCHEMA_VERSION})", deliveries, objects, raw))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=200_000)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--postgres", action="store_true", help="PostgreSQL too (must answer)")
    which.add_argument(
        "--if-server", action="store_true", help="PostgreSQL too, if a server answers"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="disk-use-") as work:
        path = measure_sqlite(Path(work), args.deliveries)
        if args.postgres or args.if_server:
            from tests.bench.postgres import server_problem

            problem = server_problem()
            if problem is None:
                measure_postgres(path, args.deliveries)
            elif args.postgres:
                print(f"no PostgreSQL server answers: {problem}", file=sys.stderr)
                return 1
            else:
                print(f"PostgreSQL skipped: {problem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

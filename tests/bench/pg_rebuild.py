"""Rebuild on PostgreSQL against SQLite, on the same log (the bench's SQLite log, copied).

The copy goes through the storage port (stored_rows from SQLite, append_stored into
PostgreSQL, in chunks), so every row keeps its bytes and its chain hash.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from projector.storage.location import PostgresUrl
from projector.storage.postgres.maintenance import open_maintenance
from projector.storage.sqlite.adapter import SqliteMaintenance
from tests.bench.pg_service import verify
from tests.bench.run import RESULTS, Figures, timed_child
from tests.bench.workload import bench_log_name, build_log
from tests.support import service_env

COPY_CHUNK = 10_000


def bench_log(size: int) -> Path:
    """The SQLite log of `size` deliveries that `make bench` keeps (built here if missing)."""
    path = RESULTS / bench_log_name(size)
    if not path.exists():
        print(f"building a log of {size} deliveries (once; kept in {path.parent})", flush=True)
        build_log(path.with_suffix(".partial"), size)
        path.with_suffix(".partial").rename(path)
    return path


async def _copy(source: Path, url: PostgresUrl) -> int:
    sqlite = SqliteMaintenance(source, readonly=True)
    postgres = await open_maintenance(url, create=True)
    copied = 0
    try:
        while rows := await sqlite.stored_rows(copied, COPY_CHUNK):
            await postgres.append_stored(rows)
            copied = rows[-1].seq
    finally:
        await sqlite.close()
        await postgres.close()
    return copied


def copy_log(source: Path, url: PostgresUrl) -> Figures:
    """Copy the SQLite log at `source` into the empty database at `url`."""
    started = time.perf_counter()
    rows = asyncio.run(_copy(source, url))
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "rate": rows / seconds}


def rebuild(db: Path | PostgresUrl, size: int) -> Figures:
    """`projector rebuild` on `db`, as a user runs it: wall time, rate, peak RSS; then verify."""
    target = db.url if isinstance(db, PostgresUrl) else str(db)
    command = [sys.executable, "-m", "projector.cli", "rebuild"]
    figures = timed_child(command, service_env(Path(target), PROJECTOR_DB=target))
    figures["rate"] = size / figures["seconds"]
    figures["verified"] = verify(db)
    return figures

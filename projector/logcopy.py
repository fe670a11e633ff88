"""`projector copy`: a log carried row for row to another database (SQLite or PostgreSQL).

Only through the storage port: the source's stored rows, appended unchanged to the
destination, which checks that each chunk continues its hash chain. A rerun resumes after
the destination's head once that head is shown to be the source's row at the same seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import structlog

from projector.config import ConfigError
from projector.storage.engine import OPEN_ERRORS, describe_error, open_maintenance
from projector.storage.location import Location, PostgresUrl
from projector.storage.port import Maintenance
from projector.storage.rows import RowsDoNotContinue, StoredRow

logger = structlog.get_logger("projector.logcopy")

CHUNK_ROWS = 5000


class LogsDiffer(Exception):
    """The destination holds rows that are not the source's: copying would mix two logs."""


class CopyStopped(Exception):
    """A database failed part-way; what was committed stays, and a rerun resumes after it."""


@dataclass
class CopyProgress:
    """How far a copy is: rows copied so far, of those to copy."""

    copied: int = 0
    total: int = 0

    def progress(self) -> str:
        return f"copied {self.copied} / {self.total} rows"


@dataclass(frozen=True)
class CopyResult:
    """What a copy did: seq `after`+1..`last` copied, and how long that took."""

    after: int
    last: int
    seconds: float

    @property
    def copied(self) -> int:
        return self.last - self.after

    @property
    def rate(self) -> float:
        return self.copied / self.seconds if self.seconds > 0 else 0.0


def _shown(location: Location) -> str:
    return str(location.resolve()) if isinstance(location, Path) else str(location)


def check_distinct(source: Location, destination: Location) -> None:
    """Refuse (ConfigError) a copy of a database onto itself."""
    same = (
        source.resolve() == destination.resolve()
        if isinstance(source, Path) and isinstance(destination, Path)
        else isinstance(source, PostgresUrl) and source == destination
    )
    if same:
        raise ConfigError(
            f"SOURCE and DEST are the same database ({_shown(source)}); name another file "
            "or database as DEST"
        )


async def open_end(location: Location, role: str, *, readonly: bool) -> Maintenance:
    """SOURCE (read-only) or DEST (created or migrated); ConfigError naming `role` if not."""
    try:
        return await open_maintenance(location, readonly=readonly, create=not readonly, label=role)
    except ConfigError:
        raise
    except OPEN_ERRORS as exc:
        raise ConfigError(
            f"{role} ({_shown(location)}): cannot open it: {describe_error(location, exc)}"
        ) from None


async def resume_after(
    source: Maintenance, destination: Maintenance, source_head: tuple[int, str]
) -> int:
    """The destination's head, once shown to be the source's row there; LogsDiffer if not."""
    seq, stored_hash = await destination.head()
    if seq == 0:
        return 0
    fix = "copy into a new SQLite file or an empty PostgreSQL database"
    last = source_head[0]
    if seq > last:
        ours = await destination.stored_rows(last - 1, 1) if last else []
        continues = not last or (bool(ours) and ours[0].row_hash == source_head[1])
        how = (
            "its first rows are the source's whole log (has a service written to it since?)"
            if continues
            else "the two logs differ"
        )
        raise LogsDiffer(
            f"the destination holds seq 1..{seq}, more than the source's 1..{last}: {how}; "
            f"nothing was copied; {fix}"
        )
    rows = await source.stored_rows(seq - 1, 1)
    theirs = rows[0] if rows and rows[0].seq == seq else None
    if theirs is None or theirs.row_hash != stored_hash:
        found = "no row" if theirs is None else f"hash {theirs.row_hash}"
        raise LogsDiffer(
            f"the destination's head is seq {seq} with hash {stored_hash}, but the source has "
            f"{found} at seq {seq}: the two logs differ; nothing was copied; {fix}"
        )
    return seq


async def _read(source: Maintenance, after: int, last: int, chunk: int) -> list[StoredRow]:
    if after >= last:
        return []
    rows = await source.stored_rows(after, min(chunk, last - after))
    return [row for row in rows if row.seq <= last]


async def copy_rows(
    source: Maintenance,
    destination: Maintenance,
    after: int,
    last: int,
    progress: CopyProgress,
    chunk: int = CHUNK_ROWS,
) -> None:
    """Copy seq `after`+1..`last`, a chunk per transaction; the next chunk is read meanwhile."""
    pending = asyncio.ensure_future(_read(source, after, last, chunk))
    try:
        while rows := await pending:
            pending = asyncio.ensure_future(_read(source, rows[-1].seq, last, chunk))
            try:
                await destination.append_stored(rows)
            except RowsDoNotContinue as exc:
                raise RowsDoNotContinue(
                    f"the copy stopped at seq {rows[0].seq} (seq 1..{rows[0].seq - 1} are in "
                    f"the destination): {exc}; check the source with `projector verify` "
                    "(nothing else may write to the destination during a copy)"
                ) from None
            progress.copied += len(rows)
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, *OPEN_ERRORS):
                await pending


async def _tick(show: Callable[[CopyProgress], None], progress: CopyProgress) -> None:
    while True:
        await asyncio.sleep(1.0)
        show(progress)


async def copy_log(
    source: Maintenance,
    destination: Maintenance,
    out: TextIO,
    show: Callable[[CopyProgress], None] | None = None,
    chunk: int = CHUNK_ROWS,
) -> CopyResult:
    """Copy what the source holds now (its head at the start) after the destination's head."""
    source_head = await source.head()
    after = await resume_after(source, destination, source_head)
    last = source_head[0]
    if after == last:
        print(f"nothing to copy: the destination holds the source's seq 1..{last}", file=out)
    else:
        print(
            f"copying seq {after + 1}..{last} (the source's head as the copy starts: deliveries "
            "it stores meanwhile are left for the next run)",
            file=out,
        )
    out.flush()
    progress = CopyProgress(total=last - after)
    ticker = None if show is None else asyncio.create_task(_tick(show, progress))
    started = time.perf_counter()
    try:
        await copy_rows(source, destination, after, last, progress, chunk)
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    result = CopyResult(after, last, time.perf_counter() - started)
    logger.info("log_copied", after=after, last=last, seconds=round(result.seconds, 3))
    return result


async def run_copy(
    source_location: Location,
    destination_location: Location,
    out: TextIO,
    show: Callable[[CopyProgress], None] | None = None,
) -> int:
    """The whole command: open both ends, copy, rebuild the destination's read models, report.

    Returns the exit code: 0 when both heads match at the end.
    """
    check_distinct(source_location, destination_location)
    source = await open_end(source_location, "SOURCE", readonly=True)
    try:
        destination = await open_end(destination_location, "DEST", readonly=False)
        try:
            return await _copy_and_rebuild(source, destination, out, show)
        finally:
            await destination.close()
    except OPEN_ERRORS as exc:
        text = describe_error(source_location, exc)
        text = describe_error(destination_location, Exception(text))  # either may be the URL
        raise CopyStopped(
            f"the copy stopped: {text}; what was committed stays: run the same command again "
            "and it resumes after it"
        ) from None
    finally:
        await source.close()


async def _copy_and_rebuild(
    source: Maintenance,
    destination: Maintenance,
    out: TextIO,
    show: Callable[[CopyProgress], None] | None,
) -> int:
    result = await copy_log(source, destination, out, show)
    rebuild_started = time.perf_counter()
    await destination.rebuild()
    rebuild_seconds = time.perf_counter() - rebuild_started
    source_now = (await source.head())[0]
    copied = await source.stored_rows(result.last - 1, 1) if result.last else []
    source_head = (copied[0].seq, copied[0].row_hash) if copied else await source.head()
    destination_head = await destination.head()
    print(f"source:      {source.description}", file=out)
    print(f"  head seq {source_head[0]}, hash {source_head[1]}", file=out)
    if source_now > source_head[0]:
        print(f"  (it holds seq {source_now} by now: run the copy again for the rest)", file=out)
    print(f"destination: {destination.description}", file=out)
    print(f"  head seq {destination_head[0]}, hash {destination_head[1]}", file=out)
    print(
        f"copied {result.copied} rows in {result.seconds:.2f} s ({result.rate:,.0f} rows/s); "
        f"read models rebuilt from the copied log in {rebuild_seconds:.2f} s",
        file=out,
    )
    if destination_head != source_head:
        print("the heads differ: the destination is not a copy of the source", file=out)
        return 1
    print("heads match: the destination holds the source's log", file=out)
    return 0

"""The log's own commands: rebuild, verify, backup, copy (through the storage port)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from projector import logcopy
from projector.config import ConfigError, Settings, load_settings
from projector.logs import configure_logging
from projector.sender import terminal_progress
from projector.storage.engine import open_maintenance
from projector.storage.location import Location, parse_location
from projector.storage.sqlite import database

Adder = Callable[[str, str], argparse.ArgumentParser]


def _settings() -> Settings:
    return load_settings(require_secrets=False)


# --- rebuild ----------------------------------------------------------------------------


def cmd_rebuild(args: argparse.Namespace) -> int:
    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    return asyncio.run(_rebuild(settings))


async def _rebuild(settings: Settings) -> int:
    maintenance = await open_maintenance(settings.db, readonly=False)
    try:
        head = await maintenance.rebuild()
        for state in await maintenance.statuses():
            print(
                f"{state.name}: version {state.version}, position {state.position}, "
                f"errors {state.errors}"
            )
    finally:
        await maintenance.close()
    print(f"rebuilt from {head} deliveries")
    return 0


# --- verify ---------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    settings = _settings()
    return asyncio.run(_verify(settings))


async def _verify(settings: Settings) -> int:
    maintenance = await open_maintenance(settings.db, readonly=True)
    try:
        verification = await maintenance.verify()
        stored_head = await maintenance.head()
    finally:
        await maintenance.close()
    report = verification.chain
    for line in verification.checks:
        print(line)
    if report.intact:
        print(f"chain: {report.rows} rows, seq 1..{report.head_seq} without gaps, hashes match")
    else:
        print(f"chain: broken at seq {report.broken_at}: {report.problem}")
        print(f"intact up to seq {report.head_seq}, hash {report.head_hash}")
    print(f"head: seq {stored_head[0]}, hash {stored_head[1]}")
    intact = verification.intact
    print("log intact" if intact else "log NOT intact: restore from a backup you verified")
    return 0 if intact else 1


# --- backup ---------------------------------------------------------------------------


def cmd_backup(args: argparse.Namespace) -> int:
    settings = _settings()
    if not isinstance(settings.db, Path):
        raise ConfigError(
            "`projector backup` copies a SQLite file; on PostgreSQL back up with pg_dump "
            "(see the README), or copy the log to a SQLite file with `projector copy`"
        )
    source = database.open_database(settings.db, readonly=True)
    try:
        destination = database.check_backup_destination(Path(args.destination))
        head = database.backup(source, destination)
    finally:
        source.close()
    print(f"backed up {head} deliveries and the read models to {destination}")
    return 0


# --- copy -------------------------------------------------------------------------------


def _location(raw: str, name: str) -> Location:
    try:
        return parse_location(raw, name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def cmd_copy(args: argparse.Namespace) -> int:
    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    source = _location(args.source, "SOURCE")
    destination = _location(args.destination, "DEST")
    progress = terminal_progress(sys.stderr)
    try:
        return asyncio.run(logcopy.run_copy(source, destination, sys.stdout, progress))
    except (logcopy.LogsDiffer, logcopy.CopyStopped) as exc:
        print(f"projector: {exc}", file=sys.stderr)
        return 1
    finally:
        if progress is not None:
            progress.end()


# --- parser -----------------------------------------------------------------------------


def add_commands(command: Adder) -> None:
    """Add rebuild, verify, backup and copy, with `command(name, summary)` making each."""
    rebuild = command(
        "rebuild",
        "replay the whole log into fresh read models and swap them in "
        "atomically (safe while the server runs)",
    )
    rebuild.set_defaults(run=cmd_rebuild)

    verify = command(
        "verify",
        "walk the log: check seq has no gaps and every row's hash chain; print the head hash "
        "(exit 0 intact, 1 not)",
    )
    verify.set_defaults(run=cmd_verify)

    backup = command(
        "backup",
        "copy the database (log and read models) to a new file, consistently, "
        "while the server runs",
    )
    backup.add_argument("destination", metavar="FILE")
    backup.set_defaults(run=cmd_backup)

    copy = command(
        "copy",
        "copy the log row for row (seq, hashes and all) from SOURCE to DEST, each a SQLite "
        "file or a postgresql:// URL, resuming after DEST's head; then rebuild DEST's read models",
    )
    copy.add_argument("source", metavar="SOURCE", help="read-only; may be a running service's")
    copy.add_argument("destination", metavar="DEST", help="created if new")
    copy.set_defaults(run=cmd_copy)

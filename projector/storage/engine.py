"""The engine PROJECTOR_DB names, opened for the server, a CLI command or a read.

A file path opens SQLite; a postgresql:// URL opens PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg

from projector.config import ConfigError
from projector.integrity import LogNotIntact
from projector.storage.location import Location, PostgresUrl
from projector.storage.port import LogSchemaError, Maintenance, Reads, Storage, StorageUnavailable
from projector.storage.postgres.adapter import PostgresStorage, postgres_reads
from projector.storage.postgres.connect import describe_error as postgres_error
from projector.storage.postgres.maintenance import open_maintenance as open_postgres_maintenance
from projector.storage.queries import SQLITE, SqlReads
from projector.storage.sqlite import database
from projector.storage.sqlite.adapter import SqliteMaintenance, SqliteStorage
from projector.storage.sqlite.forwarding import WorkerStorage
from projector.storage.sqlite.readers import ReaderPool

# What opening a log can raise, on either engine, besides ConfigError: each becomes one line.
OPEN_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.Error,
    OSError,
    LogSchemaError,
    LogNotIntact,
    StorageUnavailable,
    psycopg.Error,
)


# A SQLite file that is not a refold-projector database (or no database at all).
NOT_A_DATABASE: tuple[type[Exception], ...] = (sqlite3.DatabaseError,)


def unusable(location: Location, reason: str) -> ConfigError:
    """The error for a PROJECTOR_DB that cannot be used: names it (never a password)."""
    if isinstance(location, Path):
        return database.unusable(location, reason)
    return ConfigError(f"PROJECTOR_DB ({location}): {reason}")


def describe_error(location: Location, exc: BaseException) -> str:
    """`exc` on one line, fit for a message: never a PostgreSQL password."""
    if isinstance(location, PostgresUrl):
        return postgres_error(location, exc)
    return " ".join(str(exc).split()) or type(exc).__name__


def check_location(location: Location, *, readonly: bool, create: bool = False) -> None:
    """Raise ConfigError if a SQLite PROJECTOR_DB cannot be used as asked (servers: on open)."""
    if isinstance(location, Path):
        database.check_database(location, readonly=readonly, create=create)


def storage_for(
    location: Location,
    *,
    max_pending: int,
    on_read_models_changed: Callable[[], None],
    on_batch: Callable[[int], None],
    writer_socket: Path | None = None,
) -> Storage:
    """The storage `projector serve` runs on; `open()` connects it.

    `writer_socket`: an HTTP worker of `serve --workers N` on SQLite, appending through the
    writer process listening there (PostgreSQL workers append themselves: it is ignored).
    """
    if isinstance(location, PostgresUrl):
        return PostgresStorage(
            location,
            max_pending=max_pending,
            on_read_models_changed=on_read_models_changed,
            on_batch=on_batch,
        )
    if writer_socket is not None:
        return WorkerStorage(
            location,
            writer_socket,
            max_pending=max_pending,
            on_read_models_changed=on_read_models_changed,
        )
    return SqliteStorage(
        location,
        max_pending=max_pending,
        on_read_models_changed=on_read_models_changed,
        on_batch=on_batch,
    )


async def open_maintenance(
    location: Location, *, readonly: bool, create: bool = False, label: str = "PROJECTOR_DB"
) -> Maintenance:
    """The log for a CLI command; `readonly` never migrates or writes.

    `label` is what named a SQLite file, for its messages (PROJECTOR_DB, or copy's SOURCE).
    """
    if isinstance(location, PostgresUrl):
        return await open_postgres_maintenance(location, create=not readonly, readonly=readonly)
    return SqliteMaintenance(location, readonly=readonly, create=create, label=label)


@asynccontextmanager
async def open_reads(location: Location) -> AsyncIterator[Reads]:
    """The API's reads for a CLI command (`projector events`), closed after."""
    if isinstance(location, PostgresUrl):
        async with postgres_reads(location) as reads:
            yield reads
        return
    async with ReaderPool(location, size=1) as pool:
        yield SqlReads(pool.fetch, SQLITE)

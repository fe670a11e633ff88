"""PostgreSQL test support: a fresh database per test on a real server, dropped afterwards."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from projector.storage.location import PostgresUrl
from projector.storage.postgres import PostgresStorage
from projector.storage.postgres.projector import PostgresProjector

ADMIN_URL = os.environ.get(
    "PROJECTOR_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
HOW_TO_RUN = (
    "PostgreSQL tests need a server: start one and set PROJECTOR_TEST_POSTGRES to a URL of a "
    "user who may create databases (default postgresql://postgres@127.0.0.1:5432/postgres)"
)
READ_MODEL_TABLES = ("connections", "workflow_runs")


@cache
def server_problem() -> str | None:
    """Why no PostgreSQL server answers at ADMIN_URL, or None when one does (asked once)."""
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return f"{HOW_TO_RUN}; connecting failed: {str(exc).strip()}"


def with_database(url: str, name: str) -> str:
    """`url` naming the database `name` instead."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@contextmanager
def fresh_database() -> Iterator[PostgresUrl]:
    """A new, empty, uniquely named database; dropped (connections and all) at the end."""
    problem = server_problem()
    if problem is not None:
        if os.environ.get("PROJECTOR_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PROJECTOR_REQUIRE_POSTGRES=1 but {problem}")
        pytest.skip(problem)
    with scratch_database("refold_test_") as url:
        yield url


@contextmanager
def scratch_database(prefix: str) -> Iterator[PostgresUrl]:
    """A new database named `prefix` and a unique suffix; dropped, connections and all, after."""
    name = f"{prefix}{uuid.uuid4().hex[:16]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield PostgresUrl(with_database(ADMIN_URL, name))
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@asynccontextmanager
async def opened(url: PostgresUrl, **options: Any) -> AsyncIterator[PostgresStorage]:
    """A PostgresStorage on `url`, opened, and closed at the end."""
    storage = PostgresStorage(url, max_pending=options.pop("max_pending", 10_000), **options)
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


@asynccontextmanager
async def raw(url: PostgresUrl) -> AsyncIterator[psycopg.AsyncConnection[tuple[Any, ...]]]:
    """A plain autocommit connection, as a person at psql would have."""
    conn = await psycopg.AsyncConnection.connect(url.url, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()


async def query(url: PostgresUrl, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows of one statement, on a connection of its own."""
    async with raw(url) as conn:
        cur = await conn.execute(sql, params or None)
        return await cur.fetchall() if cur.description else []


async def read_models(url: PostgresUrl) -> dict[str, list[tuple[Any, ...]]]:
    """Both read-model tables, in a fixed order (as tests.storage_support reads SQLite's)."""
    return {
        table: await query(url, f"SELECT * FROM {table} ORDER BY 1, 2, 3")
        for table in READ_MODEL_TABLES
    }


async def positions(url: PostgresUrl) -> dict[str, int]:
    """Each projection's position."""
    return dict(await query(url, "SELECT name, position FROM projections"))


async def fold_all(projector: PostgresProjector, limit: int = 500) -> int:
    """Fold until nothing is new (the projector must hold the lease); how many were folded."""
    total = 0
    while folded := await projector.fold_new(limit):
        total += folded
    assert projector.active, "fold_all needs a projector that holds the lease"
    return total


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> bool:
    """Whether `check` comes true within `seconds`, asking every 20 ms (a bounded wait)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.02)
    return await check()

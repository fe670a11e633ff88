"""Connections to PostgreSQL: the session settings every role needs, and errors without secrets."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from projector.storage.location import PostgresUrl
from projector.storage.port import StorageUnavailable

logger = structlog.get_logger("projector.storage.postgres.connect")

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

APPLICATION_NAME = "refold-projector"
CONNECT_TIMEOUT_SECONDS = 5
# A statement waiting this long for a lock gives up: an append then answers 503, which the
# sender retries, rather than holding the request open behind a stuck transaction.
LOCK_TIMEOUT = "5s"
# A client that vanished mid-transaction must not keep the log_head lock for long.
IDLE_IN_TRANSACTION_TIMEOUT = "30s"
# synchronous_commit=on: a commit returns only once its WAL is flushed, whatever the server's
# default; a 200 promises the delivery is durable.
SESSION_SETTINGS = (
    "SET synchronous_commit = on;"
    f" SET lock_timeout = '{LOCK_TIMEOUT}';"
    f" SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}'"
)
CONNECTION_ERRORS = (psycopg.Error, OSError, TimeoutError)


def connection_parameters(url: PostgresUrl) -> dict[str, Any]:
    """What every connection adds to the URL: its name and a bound on connecting."""
    given = conninfo_to_dict(url.url)
    extra: dict[str, Any] = {}
    if "application_name" not in given:
        extra["application_name"] = APPLICATION_NAME
    if "connect_timeout" not in given:
        extra["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    return extra


def describe_error(url: PostgresUrl, exc: BaseException) -> str:
    """`exc` as text fit for a log line or a message: never the URL's password."""
    # One line: the server's message may go on with CONTEXT: and DETAIL: lines.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = "; ".join(lines) or type(exc).__name__
    password = conninfo_to_dict(url.url).get("password")
    if password:
        text = text.replace(str(password), "***")
    return text


def _advice(exc: BaseException) -> str:
    if isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
        return (
            "another transaction held what it needed too long; look for long-running or idle "
            "transactions in pg_stat_activity"
        )
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return "grant the PROJECTOR_DB user the privileges it lacks"
    return "check that the server is running and reachable and that PROJECTOR_DB names it"


def unavailable(url: PostgresUrl, exc: BaseException, doing: str) -> StorageUnavailable:
    """The error for a database that failed while `doing` something: what, where, what to do."""
    return StorageUnavailable(
        f"PostgreSQL at {url} failed while {doing}: {describe_error(url, exc)}; {_advice(exc)}"
    )


async def configure(conn: Connection) -> None:
    """Apply the session settings to a new connection (also the pool's `configure`)."""
    await conn.execute(SESSION_SETTINGS)


async def connect(url: PostgresUrl) -> Connection:
    """A new autocommit connection with the session settings; StorageUnavailable if none."""
    try:
        # The bound covers the settings' round trip too; connect_timeout alone would not.
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS * 2):
            conn = await psycopg.AsyncConnection.connect(
                url.url, autocommit=True, **connection_parameters(url)
            )
            try:
                await configure(conn)
            except BaseException:
                await conn.close()
                raise
    except CONNECTION_ERRORS as exc:
        raise unavailable(url, exc, "connecting") from None
    return conn


async def close_quietly(conn: Connection | None) -> None:
    """Close `conn` if open, ignoring errors: it is dropped because it already failed."""
    if conn is None:
        return
    with contextlib.suppress(*CONNECTION_ERRORS):
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            await conn.close()


def read_pool(url: PostgresUrl, size: int = 4) -> AsyncConnectionPool[Connection]:
    """A pool of autocommit reader connections, not yet open."""
    return AsyncConnectionPool(
        url.url,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, **connection_parameters(url)},
        configure=configure,
        open=False,
        name="refold-projector-reads",
        timeout=CONNECT_TIMEOUT_SECONDS * 2,
    )

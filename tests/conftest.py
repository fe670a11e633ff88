"""Shared fixtures: settings on a real SQLite file, an in-process server, a real process."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from projector.app import build_app
from projector.config import Settings, load_settings
from projector.storage.location import PostgresUrl
from projector.storage.queries import SQLITE, SqlReads
from projector.storage.sqlite.readers import ReaderPool
from tests.postgres_support import fresh_database
from tests.storage_support import populated_log
from tests.support import READ_TOKEN, SIGNING_KEYS, Service

# A loaded CI machine makes example generation slow; that is not a failure of the property.
# No deadline either: on a busy 2-core machine a slow example is noise, not a wrong answer.
hypothesis_settings.register_profile(
    "projector", suppress_health_check=[HealthCheck.too_slow], deadline=None
)
# HYPOTHESIS_PROFILE=reliability: the same properties, twenty times the examples.
hypothesis_settings.register_profile(
    "reliability", parent=hypothesis_settings.get_profile("projector"), max_examples=2000
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "projector"))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Name the shuffled order's seed even under -q (which hides pytest-randomly's header)."""
    if config.pluginmanager.hasplugin("randomly"):
        seed = config.getoption("randomly_seed")
        terminalreporter.write_line(f"test order: pytest --randomly-seed={seed} repeats it")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "projector.sqlite3"


@pytest.fixture
def settings(db_path: Path) -> Settings:
    return load_settings(db=db_path, signing_keys=SIGNING_KEYS, read_tokens=READ_TOKEN)


@pytest.fixture
async def client(aiohttp_client, settings: Settings) -> TestClient:  # type: ignore[no-untyped-def]
    """The whole app on a real aiohttp server on 127.0.0.1, on a real SQLite file."""
    return await aiohttp_client(build_app(settings))


@pytest.fixture
def service(db_path: Path) -> Iterator[Service]:
    """A real `projector serve` process on 127.0.0.1; killed at the end if still running."""
    running = Service(db_path).start()
    yield running
    running.kill()


@pytest.fixture
def populated(db_path: Path) -> Path:
    """The sample stream plus one undecodable body, appended and fully projected."""
    return populated_log(db_path)


@pytest.fixture
async def account_reads(populated: Path) -> AsyncIterator[SqlReads]:
    """The API's reads (banner reads shared) over a reader pool on the populated log."""
    async with ReaderPool(populated) as pool:
        yield SqlReads(pool.fetch, SQLITE)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for tests that talk to a server by URL."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def pg_url() -> Iterator[PostgresUrl]:
    """A fresh PostgreSQL database of the test's own (skipped, or failed, without a server)."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def other_url() -> Iterator[PostgresUrl]:
    """A second fresh database, for tests that copy or compare between two."""
    with fresh_database() as url:
        yield url

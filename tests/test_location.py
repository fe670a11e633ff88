"""PROJECTOR_DB: a path is SQLite, a postgresql:// URL PostgreSQL; a password is never shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from projector.config import ConfigError, load_settings
from projector.storage.location import PostgresUrl, parse_location, redact
from tests.support import REPO, free_port


def test_a_path_names_a_sqlite_file() -> None:
    assert parse_location("data/projector.sqlite3") == Path("data/projector.sqlite3")


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "PostgreSQL"])
def test_both_postgres_schemes_name_a_postgresql_database(scheme: str) -> None:
    location = parse_location(f"{scheme}://u:pw@db.internal:5433/refold?sslmode=require")
    assert isinstance(location, PostgresUrl)
    assert location.database == "refold"
    assert location.url.startswith(scheme.lower() + "://")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db?user=u&password=s3cret", "postgresql://h/db?user=u&password=***"),
        ("postgresql://u:p%40ss@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    location = parse_location(url)
    assert redact(url) == shown
    assert str(location) == shown
    assert "s3cret" not in repr(location)


def test_settings_show_the_url_without_its_password() -> None:
    settings = load_settings(require_secrets=False, db="postgresql://u:s3cret@h:5432/db")
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.db)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://u@h/db", "mysql:// is not a database this service can use"),
        ("postgresql://u:s3cret@h:5432", "it names no database"),
        ("postgresql://u:s3cret@h/db?sslmod=require", "unknown parameter(s) sslmod"),
        ("postgresql://u:s3cret@h:port/db", "its port is not a number"),
    ],
)
def test_a_url_that_cannot_work_is_refused_naming_the_problem_not_the_password(
    url: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match="PROJECTOR_DB") as refused:
        load_settings(require_secrets=False, db=url)
    assert problem in str(refused.value)
    assert "s3cret" not in str(refused.value)


def test_a_cli_command_on_an_unreachable_server_exits_2_without_the_password(
    tmp_path: Path,
) -> None:
    """Nothing listens on the port: one line says what failed and what to check."""
    url = f"postgresql://u:s3cret@127.0.0.1:{free_port()}/refold?connect_timeout=2"
    done = subprocess.run(
        [sys.executable, "-m", "projector.cli", "verify"],
        env={"PROJECTOR_DB": url, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "s3cret" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "postgresql://u:***@127.0.0.1" in done.stderr
    assert "check that the server is running" in done.stderr

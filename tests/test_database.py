"""projector.database: an unusable PROJECTOR_DB or backup file is named, resolved, exit 2."""

from __future__ import annotations

import ctypes
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from projector.storage.sqlite import log
from tests.support import service_env

# Every subcommand that opens PROJECTOR_DB. serve gets port 1, which it could not bind: if a
# bad database ever slipped past the checks, serve would still exit rather than run on.
# Each kind of trouble is tried with every command where the commands differ, and with one
# that writes and one that only reads where they share the whole path.
DB_COMMANDS = {
    "serve": ("serve", "--port", "1"),
    "rebuild": ("rebuild",),
    "verify": ("verify",),
    "events": ("events",),
    "backup": ("backup", "new-backup.sqlite3"),
}
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _drop_permission_override() -> None:
    """In the child before exec: root loses the capabilities that let it ignore file modes."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")


def run_in(
    cwd: Path, *args: str, env: dict[str, str], modes_bind_root: bool = False
) -> subprocess.CompletedProcess[str]:
    """`projector ARGS` run from `cwd`; as root, optionally without the file-mode override."""
    preexec: Callable[[], None] | None = None
    if modes_bind_root and os.geteuid() == 0:
        preexec = _drop_permission_override
    try:
        return subprocess.run(
            [sys.executable, "-m", "projector.cli", *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            # Runs between fork and exec; what it calls (prctl) takes no lock another
            # thread could hold, so it is safe even in a threaded test process.
            preexec_fn=preexec,
        )
    except subprocess.SubprocessError as exc:
        if preexec is None:
            raise
        pytest.skip(f"root here cannot give up CAP_DAC_OVERRIDE ({exc}), so modes cannot bind it")


@contextmanager
def mode(path: Path, bits: int) -> Iterator[None]:
    """`path` with permission bits `bits`, restored after (so tmp_path can be removed)."""
    old = path.stat().st_mode & 0o777
    path.chmod(bits)
    try:
        yield
    finally:
        path.chmod(old)


def make_log(path: Path) -> Path:
    """A real, migrated (empty) refold-projector log at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = log.connect(path)
    log.migrate(conn)
    conn.close()
    return path


def assert_names_db(result: subprocess.CompletedProcess[str], db: Path, words: str) -> None:
    """Exit 2, one plain line naming PROJECTOR_DB with its absolute path, and the reason."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"PROJECTOR_DB ({db.resolve()})" in result.stderr
    assert words in result.stderr
    assert result.stdout == ""


# --- PROJECTOR_DB -----------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(DB_COMMANDS))
def test_a_relative_db_under_a_regular_file_exits_2_naming_it_resolved(
    tmp_path: Path, command: str
) -> None:
    (tmp_path / "notes.txt").write_text("a file, not a folder\n")
    relative = Path("notes.txt/sub/projector.sqlite3")
    result = run_in(tmp_path, *DB_COMMANDS[command], env=service_env(relative))
    assert_names_db(
        result, tmp_path / relative, f"{tmp_path / 'notes.txt'} is a file, not a folder"
    )
    assert (tmp_path / "notes.txt").read_text() == "a file, not a folder\n"


@pytest.mark.parametrize("command", ["serve", "verify"])
def test_a_relative_db_that_is_a_folder_exits_2_naming_it_resolved(
    tmp_path: Path, command: str
) -> None:
    (tmp_path / "data").mkdir()
    result = run_in(tmp_path, *DB_COMMANDS[command], env=service_env(Path("data")))
    assert_names_db(result, tmp_path / "data", "it is a folder, not a file")


@pytest.mark.parametrize("command", ["serve", "verify"])
def test_a_db_that_is_not_sqlite_exits_2_naming_it(tmp_path: Path, command: str) -> None:
    db = tmp_path / "projector.sqlite3"
    db.write_bytes(b"this is not SQLite\n" * 100)
    result = run_in(tmp_path, *DB_COMMANDS[command], env=service_env(Path(db.name)))
    assert_names_db(result, db, "cannot use it as the database (file is not a database)")


@pytest.mark.parametrize("command", ["verify", "events", "backup"])
def test_a_sqlite_file_that_is_not_a_log_is_named_by_every_reading_command(
    tmp_path: Path, command: str
) -> None:
    db = tmp_path / "someone-elses.sqlite3"
    other = sqlite3.connect(db)
    other.execute("CREATE TABLE notes (text)")
    other.close()
    result = run_in(tmp_path, *DB_COMMANDS[command], env=service_env(Path(db.name)))
    assert_names_db(result, db, "the database has log schema version 0, older than")
    assert sorted(p.name for p in tmp_path.iterdir()) == [db.name]  # no backup file either


@pytest.mark.parametrize("command", ["rebuild", "verify", "events", "backup"])
def test_a_missing_db_exits_2_naming_it_resolved_and_creates_nothing(
    tmp_path: Path, command: str
) -> None:
    relative = Path("nowhere/projector.sqlite3")
    result = run_in(tmp_path, *DB_COMMANDS[command], env=service_env(relative))
    assert_names_db(result, tmp_path / relative, "no database there; start `projector serve`")
    assert sorted(tmp_path.iterdir()) == []


def test_serve_exits_2_when_the_db_folder_cannot_be_created(tmp_path: Path) -> None:
    # /proc refuses new folders to every user, root included.
    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc, a place where no user can create a folder")
    db = Path(f"/proc/refold-projector-{os.getpid()}/projector.sqlite3")
    result = run_in(tmp_path, *DB_COMMANDS["serve"], env=service_env(db))
    assert_names_db(result, db, f"cannot create the folder {db.parent} (")


@pytest.mark.parametrize("command", sorted(DB_COMMANDS))
def test_a_db_file_without_permission_exits_2_saying_so(tmp_path: Path, command: str) -> None:
    db = make_log(tmp_path / "projector.sqlite3")
    wanted = "read it" if command in ("verify", "events", "backup") else "read and write it"
    with mode(db, 0o000):
        result = run_in(tmp_path, *DB_COMMANDS[command], env=service_env(db), modes_bind_root=True)
    assert_names_db(result, db, f"no permission to {wanted}")


@pytest.mark.parametrize("command", ["serve", "verify"])
def test_a_db_in_a_folder_without_permission_exits_2_saying_so(
    tmp_path: Path, command: str
) -> None:
    db = make_log(tmp_path / "locked" / "projector.sqlite3")
    with mode(db.parent, 0o000):
        result = run_in(tmp_path, *DB_COMMANDS[command], env=service_env(db), modes_bind_root=True)
    assert_names_db(result, db, f"no permission to enter the folder {db.parent}")


@pytest.mark.parametrize("command", ["serve", "rebuild"])
def test_a_db_in_a_read_only_folder_cannot_be_written_and_says_why(
    tmp_path: Path, command: str
) -> None:
    db = make_log(tmp_path / "read-only" / "projector.sqlite3")
    with mode(db.parent, 0o500):
        result = run_in(tmp_path, *DB_COMMANDS[command], env=service_env(db), modes_bind_root=True)
    assert_names_db(result, db, f"no permission to write in the folder {db.parent}")


# --- backup ------------------------------------------------------------------------------


def test_backup_copies_the_log_to_a_new_file_named_resolved(populated: Path) -> None:
    folder = populated.parent
    result = run_in(folder, "backup", "copy.sqlite3", env=service_env(populated))
    assert result.returncode == 0, result.stderr
    copy = folder / "copy.sqlite3"
    head = sqlite3.connect(populated).execute("SELECT max(seq) FROM deliveries").fetchone()[0]
    assert result.stdout == f"backed up {head} deliveries and the read models to {copy}\n"
    assert sqlite3.connect(copy).execute("SELECT max(seq) FROM deliveries").fetchone() == (head,)
    verified = run_in(folder, "verify", env=service_env(copy))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def backup_fails(folder: Path, destination: str, **options: bool) -> str:
    """Run `projector backup DESTINATION` on a good log; exit 2, the one line it printed."""
    db = make_log(folder / "projector.sqlite3")
    result = run_in(folder, "backup", destination, env=service_env(db), **options)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "PROJECTOR_DB" not in result.stderr
    assert f"backup destination ({(folder / destination).resolve()})" in result.stderr
    return result.stderr


def test_backup_to_a_path_under_a_regular_file_names_the_destination(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    message = backup_fails(tmp_path, "notes.txt/backup.sqlite3")
    assert f"{tmp_path / 'notes.txt'} is a file, not a folder" in message


def test_backup_into_a_missing_folder_names_the_destination(tmp_path: Path) -> None:
    message = backup_fails(tmp_path, "missing/backup.sqlite3")
    assert f"the folder {tmp_path / 'missing'} does not exist" in message
    assert not (tmp_path / "missing").exists()


def test_backup_onto_an_existing_file_names_it_and_leaves_it_alone(tmp_path: Path) -> None:
    (tmp_path / "old.sqlite3").write_bytes(b"keep me")
    assert "exists already" in backup_fails(tmp_path, "old.sqlite3")
    assert (tmp_path / "old.sqlite3").read_bytes() == b"keep me"


def test_backup_into_a_folder_without_permission_names_the_destination(tmp_path: Path) -> None:
    (tmp_path / "locked").mkdir()
    with mode(tmp_path / "locked", 0o500):
        message = backup_fails(tmp_path, "locked/backup.sqlite3", modes_bind_root=True)
    assert f"no permission to write in the folder {tmp_path / 'locked'}" in message
    assert list((tmp_path / "locked").iterdir()) == []


def test_backup_where_no_file_can_be_made_names_the_destination_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc, a folder where no user can create a file")
    destination = f"/proc/refold-projector-{os.getpid()}.sqlite3"
    message = backup_fails(tmp_path, destination)
    assert "cannot write it (" in message
    assert not Path(destination).exists()

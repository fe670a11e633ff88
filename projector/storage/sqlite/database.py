"""PROJECTOR_DB and backup files checked before use: each way one is unusable, named."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from projector.config import ConfigError
from projector.storage.port import LogSchemaError
from projector.storage.sqlite import log

VARIABLE = "PROJECTOR_DB"


def _fix(label: str) -> str:
    """What to do about an unusable file, said of the variable or argument that named it."""
    if label == VARIABLE:
        return "set PROJECTOR_DB to a file in a folder this user can read and write"
    return f"name as {label} a file in a folder this user can read and write"


def shown(path: Path) -> Path:
    """The absolute form of `path`, as messages show it (a relative path says too little)."""
    return path.resolve()


def _folder_problem(folder: Path) -> str | None:
    """What stops reaching `folder` (a file in the way, a folder not to be entered), if any."""
    # From the root down, so each step is one this process could see into.
    for step in (*reversed(folder.parents), folder):
        if not os.path.lexists(step):
            return None  # missing from here on: it can be created, or creating it says why
        if not os.path.isdir(step):
            return f"{step} is a file, not a folder"
        if not os.access(step, os.X_OK):
            return f"no permission to enter the folder {step}"
    return None


def unusable(path: Path, reason: str, label: str = VARIABLE) -> ConfigError:
    """The error for a PROJECTOR_DB (or `label`) that cannot be used, naming it resolved."""
    return ConfigError(f"{label} ({shown(path)}): {reason}")


def _access_problem(where: Path, readonly: bool) -> str | None:
    """A permission this process lacks on the database or (to write) its folder, if any."""
    if os.path.exists(where) and not os.access(where, os.R_OK if readonly else os.R_OK | os.W_OK):
        return f"no permission to {'read' if readonly else 'read and write'} it"
    if not readonly and not os.access(where.parent, os.W_OK):
        # SQLite keeps its -wal and -shm files beside the database.
        return f"no permission to write in the folder {where.parent}, where SQLite keeps its files"
    return None


def open_database(
    path: Path, *, readonly: bool, create: bool = False, label: str = VARIABLE
) -> sqlite3.Connection:
    """Open the log at PROJECTOR_DB, or raise ConfigError saying why it cannot be used.

    `create` makes the folder and the file when they do not exist yet (`serve`, and a copy's
    destination); `label` is what named the file in messages (PROJECTOR_DB, or SOURCE).
    """
    where = shown(path)
    problem = _folder_problem(where.parent)
    if problem is None and os.path.isdir(where):
        example = where / "projector.sqlite3"
        raise unusable(
            where, f"it is a folder, not a file; name a file in it, e.g. {example}", label
        )
    if problem is None and not os.path.exists(where):
        if not create:
            raise unusable(
                where, "no database there; start `projector serve` first, or fix the path", label
            )
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problem = f"cannot create the folder {where.parent} ({exc.strerror})"
    if problem is None:
        problem = _access_problem(where, readonly)
    if problem is not None:
        raise unusable(where, f"{problem}; {_fix(label)}", label)
    try:
        conn = log.connect(where, readonly=readonly)
    except (sqlite3.Error, OSError) as exc:
        raise _not_a_database(where, exc, label) from None
    try:
        conn.execute("PRAGMA user_version").fetchone()  # reads the header: is it SQLite at all?
        if readonly:  # nothing will migrate it: it must be a log at this code's version
            log.check_version(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise _not_a_database(where, exc, label) from None
    except LogSchemaError as exc:
        conn.close()
        raise unusable(where, str(exc), label) from None
    return conn


def _not_a_database(where: Path, exc: Exception, label: str) -> ConfigError:
    if not os.access(where.parent, os.W_OK):
        # A WAL database needs its -shm file even to be read, and SQLite creates it there.
        return unusable(
            where,
            f"cannot open it ({exc}): no permission to write in the folder {where.parent}"
            f", where SQLite keeps the -wal and -shm files it needs even to read; {_fix(label)}",
            label,
        )
    return unusable(
        where,
        f"cannot use it as the database ({exc}); point {label} at a refold-projector "
        "SQLite file, or at a new file in a folder this user can write to",
        label,
    )


def check_database(path: Path, *, readonly: bool, create: bool = False) -> None:
    """Raise ConfigError if PROJECTOR_DB cannot be used as asked; opens and closes it once."""
    open_database(path, readonly=readonly, create=create).close()


def check_backup_destination(path: Path) -> Path:
    """The resolved backup file, or ConfigError naming it: it must be new, in a writable folder."""
    where = shown(path)
    label = f"backup destination ({where})"
    problem = _folder_problem(where.parent)
    if problem is not None:
        raise ConfigError(f"{label}: {problem}; choose a file in a folder you can write to")
    if os.path.lexists(where):
        raise ConfigError(f"{label} exists already; choose a new file for the backup")
    if not os.path.isdir(where.parent):
        raise ConfigError(f"{label}: the folder {where.parent} does not exist; create it first")
    if not os.access(where.parent, os.W_OK):
        raise ConfigError(f"{label}: no permission to write in the folder {where.parent}")
    return where


def backup(source: sqlite3.Connection, destination: Path) -> int:
    """Back `source` up to the new file `destination`; the log's head. No partial file is left."""
    try:
        target = sqlite3.connect(destination)
        try:
            # SQLite's online backup: a consistent snapshot, safe while the server writes.
            source.backup(target)
            return log.head(target)
        finally:
            target.close()
    except (sqlite3.Error, OSError) as exc:
        destination.unlink(missing_ok=True)
        raise ConfigError(f"backup destination ({destination}): cannot write it ({exc})") from None

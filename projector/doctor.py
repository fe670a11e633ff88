"""`projector doctor`'s local checks (configuration, database) and the `Check` each gives.

A check passes, fails (saying what to do) or is skipped (saying why); doctor_remote.py
holds the checks that go over the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from projector.config import ENVIRONMENTS, ConfigError, Settings, load_settings
from projector.integrity import GENESIS_HASH, row_hash
from projector.storage.engine import OPEN_ERRORS, open_maintenance
from projector.storage.location import Location
from projector.storage.port import Maintenance

# The imperative a project message puts after its last "; " when it says what to do.
_ADVICE = re.compile(
    r"(start|set|check|put|try|grant|point|look|give|run|fix|restore|use|add|choose|"
    r"name|create|remove|stop)\b"
)


@dataclass(frozen=True)
class Check:
    """One check's outcome: `ok`, or not with `fix` saying what to do; `skipped` is no failure."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    skipped: bool = False

    @property
    def status(self) -> str:
        return "skip" if self.skipped else "ok" if self.ok else "FAIL"

    def line(self) -> str:
        fix = f" — {self.fix}" if self.fix and not self.ok else ""
        return f"{self.status:<4} {self.name}: {self.detail}{fix}"


def failed(name: str, message: str, fallback: str) -> Check:
    """A failure from an error message: its own advice (after its last "; ") is the fix."""
    detail, _, advice = message.rpartition("; ")
    if detail and _ADVICE.match(advice):
        return Check(name, False, detail, advice)
    return Check(name, False, message, fallback)


def skipped(name: str, why: str) -> Check:
    return Check(name, True, why, skipped=True)


def shown_url(url: str, *, whole: bool = True) -> str:
    """`url` fit to print: never a password; without its path and query unless `whole`."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    if not whole:
        return f"{parts.scheme}://{host}/…" if parts.path or parts.query else url
    return url.replace(parts.netloc, host, 1)


# --- 1. configuration ----------------------------------------------------------------


def check_configuration() -> tuple[Check, Settings | None]:
    """Load the settings `projector serve` needs (keys and read tokens included)."""
    try:
        settings = load_settings(require_secrets=True)
    except ConfigError as exc:
        fix = "fix that variable (README: Configuration), then run `projector doctor` again"
        return failed("configuration", str(exc), fix), None
    have = {key.environment for key in settings.signing_keys}
    environments = [environment for environment in ENVIRONMENTS if environment in have]
    keys, tokens = len(settings.signing_keys), len(settings.read_tokens)
    detail = (
        f"{keys} signing key{'s' * (keys != 1)} ({', '.join(environments)}), "
        f"{tokens} read token{'s' * (tokens != 1)}"
    )
    return Check("configuration", True, detail), settings


# --- 2. database ---------------------------------------------------------------------

_CANNOT_OPEN: tuple[type[Exception], ...] = (ConfigError, *OPEN_ERRORS)
_RESTORE = (
    "run `projector verify` to find the first altered row, and restore the log from a backup "
    "you verified"
)


async def check_database(location: Location) -> Check:
    """Open the log read-only (never creating it) and check that its head row chains."""
    try:
        maintenance = await open_maintenance(location, readonly=True)
    except _CANNOT_OPEN as exc:
        fallback = "point PROJECTOR_DB at this service's database, or start `projector serve`"
        return failed("database", str(exc), fallback)
    try:
        return await _check_head(maintenance)
    except OPEN_ERRORS as exc:
        return failed("database", f"{maintenance.description}: {exc}", _RESTORE)
    finally:
        await maintenance.close()


async def _check_head(maintenance: Maintenance) -> Check:
    where = maintenance.description
    head, head_hash = await maintenance.head()
    if head == 0:
        return Check("database", True, f"{where}: empty (no deliveries yet)")
    # The head and the row before it, by seq: a server appending meanwhile adds none of these.
    after = max(head - 2, 0)
    rows = {row.seq: row for row in await maintenance.stored_rows(after, head - after)}
    before = rows.get(head - 1)
    previous = GENESIS_HASH if head == 1 else None if before is None else before.row_hash
    last = rows.get(head)
    if previous is None or last is None:
        missing = head - 1 if previous is None else head
        detail = f"{where}: seq {missing} is missing (the head is seq {head})"
        return Check("database", False, detail, _RESTORE)
    if row_hash(previous, last.content) != last.row_hash:
        detail = (
            f"{where}: the head row (seq {head}) does not hash to its stored hash chained to "
            f"the row before it: one of them was altered"
        )
        return Check("database", False, detail, _RESTORE)
    chained = "the genesis hash" if head == 1 else f"seq {head - 1}"
    detail = (
        f"{where}: head seq {head}, hash {head_hash}, chained to {chained} "
        "(`projector verify` walks the whole log)"
    )
    return Check("database", True, detail)

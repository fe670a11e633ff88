"""The command line's option types, version and help texts (variables, exit codes, example)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from importlib import metadata

from projector.flags import flag_problem

_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII digits only, and what SQLite's integers hold


def whole_number(name: str, low: int, high: int | None = None) -> Callable[[str], int]:
    """An option's type: a whole number in low..high, refused in the words the API uses."""
    span = f" from {low} to {high}" if high is not None else f", {low} or more"

    def parse(value: str) -> int:
        number = int(value) if _DIGITS.fullmatch(value) else None
        if number is None or number < low or (high is not None and number > high):
            raise argparse.ArgumentTypeError(f"{name} must be a whole number{span}")
        return number

    return parse


def log_position(value: str) -> int:
    """--after: a seq, as GET /v1/events?after= takes it."""
    if not _DIGITS.fullmatch(value):
        raise argparse.ArgumentTypeError("after must be a log position (0 or more)")
    return int(value)


def flag_argument(value: str) -> str:
    """`projector events --flag NAME`: the same check, in the same words, as the API's."""
    problem = flag_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def package_version() -> str:
    """This package's version, from its installed metadata (pyproject.toml)."""
    try:
        return metadata.version("refold-projector")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


_LOGS = "  PROJECTOR_LOG_FORMAT, PROJECTOR_LOG_LEVEL  how its log lines look, and how many\n"
_DB = (
    "  PROJECTOR_DB           a SQLite file (default data/projector.sqlite3) or a\n"
    "                         postgresql://user:password@host:port/dbname URL\n"
)
_CONFIG_ERROR = "  2  a configuration error, named in one line (nothing was done)\n"


def _epilog(reads: str, exits: str, example: str) -> str:
    return f"reads:\n{reads}\nexit codes:\n{exits}\nexample:\n  {example}\n"


_KEYS_FOR_REFOLD = (
    "  PROJECTOR_SIGNING_KEYS environment:api_key pairs; each environment's first key\n"
    "                         is its API key for Refold (required)\n"
    "  PROJECTOR_REFOLD_API   Refold's API (default https://app.refold.ai)\n"
    "  PROJECTOR_REFOLD_TIMEOUT_SECONDS  bound on each call to Refold (default 10)\n"
)
_REFOLD_EXITS = "  1  Refold refused a call or did not answer: one line says which and why\n"


EPILOGS = {
    "serve": _epilog(
        "  PROJECTOR_SIGNING_KEYS environment:api_key pairs (required)\n"
        "  PROJECTOR_READ_TOKENS  bearer tokens for the query API (required)\n"
        + _DB
        + "  PROJECTOR_HOST, PROJECTOR_PORT  where to listen (--host, --port win)\n"
        "  PROJECTOR_MAX_BODY_BYTES, PROJECTOR_MAX_PENDING  request limits\n" + _LOGS,
        "  0  stopped by SIGTERM or SIGINT, once in-flight deliveries were committed\n"
        "  2  a configuration error, named in one line: a variable, PROJECTOR_DB, or an\n"
        "     address already in use\n",
        "PROJECTOR_SIGNING_KEYS=test:tk_a,live:pk_b PROJECTOR_READ_TOKENS=$TOKEN "
        "projector serve --port 8080",
    ),
    "rebuild": _epilog(
        _DB + _LOGS,
        "  0  rebuilt and swapped in\n"
        "  1  another rebuild started meanwhile and carries on alone\n" + _CONFIG_ERROR,
        "PROJECTOR_DB=data/projector.sqlite3 projector rebuild",
    ),
    "verify": _epilog(
        _DB,
        "  0  the log is intact\n  1  it is not: the first broken row is printed\n" + _CONFIG_ERROR,
        "PROJECTOR_DB=data/projector.sqlite3 projector verify",
    ),
    "backup": _epilog(
        _DB,
        "  0  backed up to FILE\n"
        "  2  a configuration error, named in one line: PROJECTOR_DB, or FILE (it must be\n"
        "     new, in a folder that exists and that you can write to)\n",
        "PROJECTOR_DB=data/projector.sqlite3 projector backup /backups/projector-monday.sqlite3",
    ),
    "copy": _epilog(
        "  no database variable: SOURCE and DEST, each a SQLite file or a postgresql:// URL\n"
        + _LOGS,
        "  0  copied: both heads (seq and hash) are printed, and match\n"
        "  1  the logs differ (DEST holds rows that are not SOURCE's), SOURCE is not intact,\n"
        "     or a database failed part-way: run the same command again to resume\n"
        "  2  a configuration error, named in one line: a bad URL, a file that cannot be\n"
        "     read or created, a server that cannot be reached (nothing was copied)\n",
        "projector copy data/projector.sqlite3 postgresql://projector:$PW@db.example.com/projector",
    ),
    "send": _epilog(
        "  PROJECTOR_SIGNING_KEYS environment:api_key pairs; the first key of each\n"
        "                         environment signs that environment's lines\n" + _LOGS,
        "  0  every line was accepted (duplicates included)\n"
        "  1  some lines failed (each is printed), or nothing answers at --url\n" + _CONFIG_ERROR,
        "projector send data/sample-deliveries.jsonl --url http://127.0.0.1:8080/webhooks/refold",
    ),
    "events": _epilog(
        _DB + _LOGS,
        "  0  printed (possibly nothing)\n" + _CONFIG_ERROR,
        "projector events --environment live --linked-account-id 12345 --limit 10",
    ),
    "schemas": _epilog(
        "  no PROJECTOR_* variable\n",
        "  0  written; with --check, every file is current\n"
        "  1  with --check: some files are out of date (each is printed)\n"
        "  2  with --check: there is no schemas folder at --out\n",
        "projector schemas --check   (in the project folder)",
    ),
    "subscribe": _epilog(
        _KEYS_FOR_REFOLD,
        "  0  subscribed: each environment's line says created, updated or left as it was\n"
        + _REFOLD_EXITS
        + "  2  a configuration error, an unknown event, or an http:// URL without\n"
        "     --allow-http, named in one line (nothing was done)\n",
        "projector subscribe https://projector.example.com/webhooks/refold",
    ),
    "subscriptions": _epilog(
        _KEYS_FOR_REFOLD
        + "  PROJECTOR_PUBLIC_URL   this service's public address; its subscriptions are\n"
        "                         marked, and only they count as covering an event\n",
        "  0  listed\n" + _REFOLD_EXITS + _CONFIG_ERROR,
        "PROJECTOR_PUBLIC_URL=https://projector.example.com projector subscriptions",
    ),
    "unsubscribe": _epilog(
        _KEYS_FOR_REFOLD,
        "  0  every subscription to URL is deleted (or there was none)\n"
        + _REFOLD_EXITS
        + _CONFIG_ERROR,
        "projector unsubscribe https://projector.example.com/webhooks/refold --environment test",
    ),
    "doctor": _epilog(
        "  PROJECTOR_SIGNING_KEYS environment:api_key pairs (required); each environment's\n"
        "                         first key lists its subscriptions in Refold\n"
        "  PROJECTOR_READ_TOKENS  bearer tokens for the query API (required)\n"
        + _DB
        + "  PROJECTOR_PUBLIC_URL   if set: <it>/healthz must answer, and the subscriptions\n"
        "                         must point at <it>/webhooks/refold\n"
        "  PROJECTOR_REFOLD_API   Refold's API (default https://app.refold.ai)\n"
        "  PROJECTOR_REFOLD_TIMEOUT_SECONDS  bound on each call to Refold (default 10)\n"
        "  PROJECTOR_ALERT_URL    where --send-test-alert POSTs a test alert\n"
        + _LOGS
        + "  and every other setting, checked as `serve` checks it\n",
        "  0  every check passed (or was skipped)\n"
        "  1  some check failed: its line says what is wrong and what to do\n"
        "  2  a usage mistake (an unknown option), named in one line\n",
        "PROJECTOR_PUBLIC_URL=https://projector.example.com projector doctor --send-test-alert",
    ),
}

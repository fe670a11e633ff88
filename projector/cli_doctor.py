"""The `doctor` command: every check in turn, one line each, exit 0 only if none failed."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable

import aiohttp

from projector.cliargs import whole_number
from projector.doctor import Check, check_configuration, check_database, skipped
from projector.doctor_remote import check_alert, check_public_url, check_subscriptions
from projector.logs import configure_logging
from projector.subscriptions import client_session

Adder = Callable[[str, str], argparse.ArgumentParser]
AFTER_CONFIGURATION = ("database", "public URL", "subscriptions", "alert URL")


async def run_checks(*, send_test_alert: bool, http_seconds: float) -> AsyncIterator[Check]:
    """Each check's outcome as soon as it is known, in the order they are printed."""
    configuration, settings = check_configuration()
    yield configuration
    if settings is None:
        for name in AFTER_CONFIGURATION:
            yield skipped(name, "the configuration did not load")
        return
    configure_logging(settings.log_format, settings.log_level)
    yield await check_database(settings.db)
    http_timeout = aiohttp.ClientTimeout(total=http_seconds)
    async with aiohttp.ClientSession(timeout=http_timeout) as session:
        yield await check_public_url(session, settings.public_url)
        async with client_session(settings.refold_timeout_seconds) as refold:
            async for check in check_subscriptions(refold, settings):
                yield check
        host = socket.gethostname()
        yield await check_alert(session, settings.alert_url, send=send_test_alert, host=host)


async def _doctor(args: argparse.Namespace) -> int:
    checks = []
    async for check in run_checks(send_test_alert=args.send_test_alert, http_seconds=args.timeout):
        checks.append(check)
        if not args.json:
            print(check.line(), flush=True)  # as it comes: a slow check shows where it waits
    passed = all(check.ok for check in checks)
    if args.json:
        rows = [
            {"name": c.name, "status": c.status, "detail": c.detail, "fix": c.fix or None}
            for c in checks
        ]
        print(json.dumps({"ok": passed, "checks": rows}, indent=2, ensure_ascii=False))
    else:
        failures = sum(not check.ok for check in checks)
        print("all checks passed" if passed else f"{failures} check(s) failed")
    return 0 if passed else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    return asyncio.run(_doctor(args))


def add_command(command: Adder) -> None:
    """Add `doctor`, with `command(name, summary)` making its sub-parser."""
    doctor = command(
        "doctor",
        "check this deployment: configuration, database and its head hash, the public URL's "
        "/healthz, Refold's subscriptions per environment, and (if asked) the alert URL; one "
        "line per check",
    )
    doctor.add_argument(
        "--send-test-alert",
        action="store_true",
        help="POST a test alert to PROJECTOR_ALERT_URL (otherwise that check is skipped)",
    )
    doctor.add_argument(
        "--timeout",
        type=whole_number("timeout", 1, 120),
        default=10,
        metavar="SECONDS",
        help="bound on the /healthz and test alert requests (default 10)",
    )
    doctor.add_argument("--json", action="store_true", help="print JSON instead of lines")
    doctor.set_defaults(run=cmd_doctor)

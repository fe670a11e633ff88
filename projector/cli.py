"""The `projector` command: serve, rebuild, verify, backup, copy, send, events, doctor..."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import structlog

from projector import integrity, schemas, server, workers
from projector.cli_doctor import add_command as add_doctor_command
from projector.cli_log import add_commands as add_log_commands
from projector.cli_subscriptions import add_commands as add_subscription_commands
from projector.cliargs import EPILOGS, flag_argument, log_position, package_version, whole_number
from projector.config import ConfigError, Settings, load_settings, normalise_environment
from projector.logs import configure_logging
from projector.sender import send_bodies, terminal_progress
from projector.storage.engine import NOT_A_DATABASE, check_location, open_reads
from projector.storage.port import LogSchemaError, RebuildSuperseded, StorageUnavailable
from projector.storage.rows import RowsDoNotContinue
from projector.worker_roles import WRITER, WorkerRole, run_writer

EXIT_CONFIG = 2


def _settings(args: argparse.Namespace, *, secrets: bool, read_tokens: bool = True) -> Settings:
    overrides = {
        k: v
        for k, v in (
            ("host", getattr(args, "host", None)),
            ("port", getattr(args, "port", None)),
            ("workers", getattr(args, "workers", None)),
        )
        if v is not None
    }
    return load_settings(
        require_secrets=secrets, require_read_tokens=secrets and read_tokens, **overrides
    )


def _environment(value: str) -> str:
    """An --environment option: test or live (production is live)."""
    environment = normalise_environment(value)
    if environment is None:
        raise argparse.ArgumentTypeError(f"{value!r}: use test or live")
    return environment


def _read_bodies(path: Path) -> list[bytes]:
    """One delivery body per non-blank line, byte for byte."""
    try:
        return [line for line in path.read_bytes().splitlines() if line.strip()]
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


# --- serve ------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args, secrets=True)
    configure_logging(settings.log_format, settings.log_level)
    seed = None if args.seed is None else _read_bodies(args.seed)
    check_location(settings.db, readonly=False, create=True)
    role = WorkerRole.from_environment(os.environ)  # set only by `serve --workers N`
    if role is not None:  # each line of a child says which one wrote it
        structlog.contextvars.bind_contextvars(worker=role.name, pid=os.getpid())
    if role is None and settings.workers > 1:
        return workers.supervise(settings, seed)
    if role is not None and role.role == WRITER:
        server.run_event_loop(run_writer(settings, role))
        return 0
    server.run_event_loop(server.serve(settings, seed, role))
    return 0


# --- send -------------------------------------------------------------------------------


def cmd_send(args: argparse.Namespace) -> int:
    settings = _settings(args, secrets=True, read_tokens=False)
    configure_logging(settings.log_format, settings.log_level)
    bodies = _read_bodies(Path(args.file))
    progress = terminal_progress(sys.stderr)
    try:
        report = asyncio.run(
            send_bodies(
                args.url,
                bodies,
                settings.signing_keys,
                args.environment,
                args.concurrency,
                progress=progress,
            )
        )
    finally:
        if progress is not None:
            progress.end()
    summary = (
        f"sent {report.sent}, accepted {report.accepted}, duplicates {report.duplicates}, "
        f"failed {len(report.failed)}"
    )
    if report.unreachable is not None:  # one line, not one per line of the file
        print(
            f"projector: {report.unreachable}; check --url, and that the service runs there",
            file=sys.stderr,
        )
        if report.accepted:
            print(summary)
        return 1
    for problem in report.failed:
        print(problem, file=sys.stderr)
    print(summary)
    return 1 if report.failed else 0


# --- events -----------------------------------------------------------------------------


async def _print_events(settings: Settings, args: argparse.Namespace) -> int:
    printed, cursor = 0, None
    async with open_reads(settings.db) as reads:
        while args.limit is None or printed < args.limit:
            page_size = 1000 if args.limit is None else min(1000, args.limit - printed)
            page = await reads.audit_events(
                args.environment,
                args.linked_account_id,
                args.event,
                args.after,
                page_size,
                cursor,
                flagged=args.flagged,
                flag=args.flag,
            )
            for event in page.events:
                sys.stdout.write(event.model_dump_json() + "\n")
            printed += len(page.events)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    return printed


def cmd_events(args: argparse.Namespace) -> int:
    settings = _settings(args, secrets=False)
    configure_logging(settings.log_format, settings.log_level)
    check_location(settings.db, readonly=True)
    asyncio.run(_print_events(settings, args))
    return 0


# --- schemas ----------------------------------------------------------------------------


def cmd_schemas(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.check:
        if not out.is_dir():  # run elsewhere: nothing to compare, rather than all out of date
            raise ConfigError(
                f"no schemas folder at {out.resolve()} to check; run this in the project "
                "folder (the one holding schemas/), or name the folder with --out"
            )
        stale = schemas.stale_schemas(out)
        for name in stale:
            print(f"out of date: {out / name}", file=sys.stderr)
        if stale:
            print("run `projector schemas` to regenerate them", file=sys.stderr)
            return 1
        print(f"all {len(schemas.render_schemas())} schema files in {out} are current")
        return 0
    for path in schemas.write_schemas(out):
        print(path)
    return 0


# --- parser -----------------------------------------------------------------------------


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str
) -> argparse.ArgumentParser:
    # `help` shows in `projector --help`; `description` and `epilog` in `projector NAME --help`.
    return commands.add_parser(
        name,
        help=summary,
        description=textwrap.fill(summary[0].upper() + summary[1:], width=80),
        epilog=EPILOGS[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="projector",
        description="refold-projector: Refold webhooks in, durable event log, read models out. "
        "Configured by PROJECTOR_* environment variables (see README); each command's --help "
        "names those it reads, and every command checks any that are set.",
    )
    parser.add_argument("--version", action="version", version=f"projector {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = _command(commands, "serve", "run the receiver, projectors and query API")
    serve.add_argument("--host", help="address to listen on (PROJECTOR_HOST, default 127.0.0.1)")
    serve.add_argument(
        "--port",
        type=whole_number("port", 1, 65535),
        help="port to listen on (PROJECTOR_PORT, default 8080)",
    )
    serve.add_argument(
        "--workers",
        type=str,
        metavar="N",
        help="processes sharing the port, for every core (PROJECTOR_WORKERS, default 1)",
    )
    serve.add_argument(
        "--seed",
        type=Path,
        metavar="FILE",
        help="once listening, send FILE's deliveries to itself if the log is empty",
    )
    serve.set_defaults(run=cmd_serve)

    add_log_commands(lambda name, summary: _command(commands, name, summary))

    send = _command(
        commands,
        "send",
        "sign each line of FILE (one JSON body per line) with the configured key "
        "of its environment and POST it",
    )
    send.add_argument("file", metavar="FILE")
    send.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8080/webhooks/refold")
    send.add_argument(
        "--environment",
        type=_environment,
        default="test",
        help="for lines that name no environment (default test)",
    )
    send.add_argument(
        "--concurrency",
        type=whole_number("concurrency", 1),
        default=8,
        help="requests in flight (default 8)",
    )
    send.set_defaults(run=cmd_send)

    events = _command(commands, "events", "print the audit trail as JSON lines")
    events.add_argument(
        "--environment", type=_environment, default="live", help="test or live (default live)"
    )
    events.add_argument("--linked-account-id")
    events.add_argument("--event", help="e.g. 'Connection Expired'")
    events.add_argument("--after", type=log_position, default=0, help="only seq greater than this")
    events.add_argument(
        "--limit", type=whole_number("limit", 1), help="at most this many events (default all)"
    )
    flagged = "flagged deliveries only (--no-flagged: clean ones only)"
    events.add_argument("--flagged", action=argparse.BooleanOptionalAction, help=flagged)
    flag = "only deliveries carrying flag NAME, e.g. missing_field:slug"
    events.add_argument("--flag", type=flag_argument, metavar="NAME", help=flag)
    events.set_defaults(run=cmd_events)

    schema = _command(
        commands, "schemas", "write the JSON Schemas of payloads and answers, and openapi.json"
    )
    schema.add_argument("--out", default="schemas", help="folder (default schemas/)")
    schema.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the files are out of date"
    )
    schema.set_defaults(run=cmd_schemas)
    add_subscription_commands(lambda name, summary: _command(commands, name, summary))
    add_doctor_command(lambda name, summary: _command(commands, name, summary))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `projector` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"projector: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except LogSchemaError as exc:
        print(f"projector: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RowsDoNotContinue as exc:
        print(f"projector: {exc}", file=sys.stderr)
        return 1
    except StorageUnavailable as exc:  # PostgreSQL not reachable: its message says what to do
        print(f"projector: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # Only start-up errors reach here; the service handles its own.
    except NOT_A_DATABASE as exc:
        print(
            f"projector: cannot use the database ({exc}); check that PROJECTOR_DB names a "
            "refold-projector SQLite file (or a new one) in a folder you can write to",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    except (RebuildSuperseded, integrity.LogNotIntact) as exc:
        print(f"projector: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

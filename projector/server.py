"""`projector serve`: start the service, say where it listens, seed it, stop it gracefully."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Coroutine
from typing import Any

import structlog
from aiohttp import web

from projector.app import STORAGE, build_app
from projector.config import ConfigError, Settings
from projector.sender import send_bodies
from projector.storage.engine import OPEN_ERRORS, unusable
from projector.storage.port import Reads
from projector.worker_roles import WorkerRole, watch_supervisor

logger = structlog.get_logger("projector.server")


async def serve(
    settings: Settings, seed: list[bytes] | None, worker: WorkerRole | None = None
) -> None:
    """Serve until SIGINT or SIGTERM; `seed` bodies are sent to an empty log once listening.

    `worker`: one HTTP worker of `serve --workers N`; its supervisor seeds and welcomes.
    """
    socket = None if worker is None else worker.writer_socket
    if socket is not None:  # on SQLite the writer process derives and sends the alerts
        settings = settings.model_copy(update={"alert_url": None})
    app = build_app(settings, writer_socket=socket)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10)
    try:
        await runner.setup()  # opens and migrates the log
    except OPEN_ERRORS as exc:
        raise unusable(settings.db, f"cannot open the log ({exc})") from None
    # Workers share the port: the kernel spreads connections among them (SO_REUSEPORT).
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=worker is not None)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()  # closes the storage threads, or the process could not exit
        raise ConfigError(
            f"cannot listen on {settings.host}:{settings.port} ({exc.strerror}); choose another "
            "address with --host/--port or PROJECTOR_HOST/PROJECTOR_PORT"
        ) from None
    url = f"http://{settings.host}:{settings.port}"
    storage = runner.app[STORAGE]
    loop = asyncio.get_running_loop()
    logger.info("listening", url=url, db=storage.description, event_loop=_loop_name(loop))
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if worker is not None:
        watch_supervisor(worker.supervisor_pipe, stop.set)
    else:
        if seed is not None:
            await seed_empty_log(settings, storage.reads, url, seed)
        print_welcome(settings, url)
    await stop.wait()
    logger.info("shutting_down", reason="signal")
    # Stops accepting, lets in-flight deliveries finish and commit, then closes the log.
    await runner.cleanup()
    logger.info("stopped")


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """`uvloop` or `asyncio`: which loop runs the service, for its first log line."""
    return type(loop).__module__.split(".")[0]


def print_welcome(settings: Settings, url: str) -> None:
    """Where it listens and a curl to paste; the token only on a terminal, never in logs."""
    interactive = sys.stdout.isatty()
    token = settings.read_tokens[0].decode() if interactive else "<a PROJECTOR_READ_TOKENS token>"
    print(
        f"\nrefold-projector is listening on {url}\n"
        f"  webhook URL: {url}/webhooks/refold\n"
        f"  try:  curl -s -H 'Authorization: Bearer {token}' "
        f"'{url}/v1/accounts/12345/connections?environment=live'\n",
        flush=True,
    )


async def seed_empty_log(settings: Settings, reads: Reads, url: str, bodies: list[bytes]) -> None:
    """Send `bodies` to the service at `url`, one at a time, if its log is empty."""
    state = await reads.projection_states()
    if state.log_head:
        logger.info("seed_skipped", reason="the log is not empty", log_head=state.log_head)
        return
    # One at a time, in file order: every fresh `make run` gives each line the same seq, so
    # the answers shown in the README (seqs, duplicates, cursors) are the ones a reader gets.
    report = await send_bodies(
        f"{url}/webhooks/refold", bodies, settings.signing_keys, "test", concurrency=1
    )
    logger.info(
        "seeded",
        sent=report.sent,
        accepted=report.accepted,
        duplicates=report.duplicates,
        failed=len(report.failed),
    )


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop, or asyncio's own loop without it; the benchmark's baselines too."""
    # uvloop (libuv) turns the loop's own work per request into compiled code; it is a
    # dependency, so asyncio's loop is only for an install that cannot build it.
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)

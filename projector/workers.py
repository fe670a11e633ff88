"""`projector serve --workers N`: a supervisor running N HTTP workers on one port.

Each HTTP worker is a `projector serve` process bound with SO_REUSEPORT: it verifies,
parses and answers reads. On PostgreSQL each appends itself. On SQLite one more child, the
writer process, owns the write connection (group commit, folding, alerts); the workers send
it their deliveries over a Unix socket in a private directory (projector.storage.sqlite.
forwarding). The supervisor restarts any child that dies, forwards SIGTERM and SIGINT, and
each child stops by itself if the supervisor dies, even by SIGKILL (worker_roles).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import structlog

from projector.config import ConfigError, Settings
from projector.server import print_welcome, seed_empty_log
from projector.storage.engine import open_reads
from projector.worker_roles import HTTP, NAME_ENV, PIPE_ENV, ROLE_ENV, SOCKET_ENV, WRITER

logger = structlog.get_logger("projector.workers")

EXIT_CONFIG = 2  # a child's configuration error (cannot listen, unusable log): give up
# A child that dies sooner than this after starting died "at once": it is restarted after a
# pause that doubles each time it does so again, up to the last.
QUICK_DEATH_SECONDS = 5.0
FIRST_PAUSE_SECONDS = 0.25
LAST_PAUSE_SECONDS = 10.0
# On SIGTERM: how long children get to finish in-flight requests and commit.
STOP_SECONDS = 30.0
READY_SECONDS = 120.0  # how long seeding waits for the service to answer /readyz


@dataclass
class Child:
    """One child process: its name and role, and how it has fared."""

    name: str
    role: str
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    quick_deaths: int = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """Starts, watches, restarts and stops the children of `serve --workers N`."""

    def __init__(self, settings: Settings, rundir: Path | None) -> None:
        self._settings = settings
        # SQLite: where the writer process listens (PostgreSQL has no writer process).
        self._socket = None if rundir is None else rundir / "writer.sock"
        # Children watch the read end; only this process holds the write end, so it closes
        # (and they see EOF) however this process ends.
        self._pipe_read, self._pipe_write = os.pipe()
        self._stop = asyncio.Event()
        self._stopping = False
        self.exit_code = 0
        self.writer = Child("writer", WRITER) if rundir is not None else None
        self.http = [Child(f"http-{n}", HTTP) for n in range(1, settings.workers + 1)]

    async def run(self, seed: list[bytes] | None) -> int:
        """Run until SIGTERM or SIGINT (or a child's configuration error); the exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stop.set)
        watchers: list[asyncio.Task[None]] = []
        try:
            if self.writer is not None:
                await self._start(self.writer)
                if not await self._writer_listening():
                    return self.exit_code
                watchers.append(asyncio.create_task(self._watch(self.writer)))
            for child in self.http:
                await self._start(child)
                watchers.append(asyncio.create_task(self._watch(child)))
            announce = asyncio.create_task(self._announce(seed))
            await self._stop.wait()
            announce.cancel()
            logger.info("shutting_down", reason="signal" if not self.exit_code else "child")
        finally:
            self._stopping = True
            await self._stop_children()
            for task in watchers:
                task.cancel()
            os.close(self._pipe_read)
            os.close(self._pipe_write)
        logger.info("stopped")
        return self.exit_code

    def _environment(self, child: Child) -> dict[str, str]:
        settings = self._settings
        env = dict(os.environ)
        env.update(
            {
                ROLE_ENV: child.role,
                NAME_ENV: child.name,
                PIPE_ENV: str(self._pipe_read),
                # --host, --port and --workers may have come from the command line.
                "PROJECTOR_HOST": settings.host,
                "PROJECTOR_PORT": str(settings.port),
                "PROJECTOR_WORKERS": str(settings.workers),
            }
        )
        if self._socket is not None:
            env[SOCKET_ENV] = str(self._socket)
        return env

    async def _start(self, child: Child) -> None:
        child.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "projector.cli",
            "serve",
            env=self._environment(child),
            pass_fds=(self._pipe_read,),
        )
        child.started = time.monotonic()
        logger.info("worker_started", worker=child.name, pid=child.process.pid)

    async def _writer_listening(self) -> bool:
        """Wait (as long as the writer lives: it may be rebuilding) until it listens."""
        writer = self.writer
        assert writer is not None
        assert writer.process is not None
        assert self._socket is not None
        while not self._socket.exists():
            if writer.process.returncode is not None:
                logger.error("writer_failed_to_start", exit_status=writer.process.returncode)
                self.exit_code = EXIT_CONFIG if writer.process.returncode == EXIT_CONFIG else 1
                return False
            if self._stop.is_set():
                return False
            await asyncio.sleep(0.05)
        return True

    async def _watch(self, child: Child) -> None:
        """Restart `child` whenever it exits, unless stopping; a configuration error stops all."""
        while True:
            assert child.process is not None
            status = await child.process.wait()
            if self._stopping:
                return
            quick = time.monotonic() - child.started < QUICK_DEATH_SECONDS
            child.quick_deaths = child.quick_deaths + 1 if quick else 0
            pause = 0.0
            if child.quick_deaths:
                pause = min(FIRST_PAUSE_SECONDS * 2 ** (child.quick_deaths - 1), LAST_PAUSE_SECONDS)
            logger.warning(
                "worker_exited",
                worker=child.name,
                pid=child.process.pid,
                exit_status=_status(status),
                restart_in_seconds=pause,
            )
            if status == EXIT_CONFIG:  # it printed why; restarting would only repeat it
                logger.error("worker_configuration_error", worker=child.name, action="stopping")
                self.exit_code = EXIT_CONFIG
                self._stop.set()
                return
            await asyncio.sleep(pause)
            if self._stopping:
                return
            await self._start(child)

    async def _stop_children(self) -> None:
        # HTTP workers first: their in-flight deliveries still need the writer to commit.
        await _terminate([child for child in self.http if child.running])
        if self.writer is not None and self.writer.running:
            await _terminate([self.writer])

    async def _announce(self, seed: list[bytes] | None) -> None:
        """Once the service answers: seed an empty log, then print where it listens."""
        settings = self._settings
        url = f"http://{settings.host}:{settings.port}"
        deadline = time.monotonic() + READY_SECONDS
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{url}/readyz") as answer:
                        if answer.status == 200:
                            break
                await asyncio.sleep(0.1)
        logger.info("listening", url=url, workers=settings.workers, db=str(settings.db))
        if seed is not None:
            async with open_reads(settings.db) as reads:
                await seed_empty_log(settings, reads, url, seed)
        print_welcome(settings, url)


def _status(code: int) -> str:
    """An exit status as a person reads it: `exit 1`, or `killed by SIGKILL`."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


async def _terminate(children: list[Child]) -> None:
    """SIGTERM each, wait for all; SIGKILL any still running after STOP_SECONDS."""
    for child in children:
        assert child.process is not None
        with contextlib.suppress(ProcessLookupError):
            child.process.terminate()
    for child in children:
        assert child.process is not None
        try:
            async with asyncio.timeout(STOP_SECONDS):
                await child.process.wait()
        except TimeoutError:
            logger.error("worker_did_not_stop", worker=child.name, action="SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.process.wait()


def check_port_free(host: str, port: int) -> None:
    """Raise ConfigError if something already listens on host:port.

    The workers bind with SO_REUSEPORT, which lets any process of this user share the port:
    without this check, a second `serve --workers N` (or an old one never stopped) would
    silently take half of the connections. The probe binds without SO_REUSEPORT, so any
    listener refuses it; SO_REUSEADDR lets it pass connections left in TIME_WAIT.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another address "
            "with --host/--port or PROJECTOR_HOST/PROJECTOR_PORT, or stop what listens there"
        ) from None


def supervise(settings: Settings, seed: list[bytes] | None) -> int:
    """Run `serve --workers N` (N > 1) until stopped; returns the exit code."""
    check_port_free(settings.host, settings.port)
    # The writer's socket (SQLite only) lives in a directory of this user's alone (0700).
    sqlite = isinstance(settings.db, Path)
    rundir = Path(tempfile.mkdtemp(prefix="projector-workers-")) if sqlite else None
    try:
        # asyncio's own loop: the supervisor does little, and its subprocess support is the
        # reference one.
        return asyncio.run(Supervisor(settings, rundir).run(seed))
    finally:
        if rundir is not None:
            shutil.rmtree(rundir, ignore_errors=True)

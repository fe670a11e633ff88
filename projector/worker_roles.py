"""The children of `projector serve --workers N`: HTTP workers and, on SQLite, the writer.

The supervisor (projector.workers) starts each as `projector serve` with the environment
variables below, which are its own: they are not settings, and `--help` does not name them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from projector.alerting import AlertLoop, alert_loop_for
from projector.app import project_continuously
from projector.config import ConfigError, Settings
from projector.metrics import Metrics
from projector.storage.engine import OPEN_ERRORS, unusable
from projector.storage.sqlite.adapter import SqliteStorage
from projector.storage.sqlite.change_count import SharedChangeCount, change_count_path
from projector.storage.sqlite.lane_server import LaneServer

logger = structlog.get_logger("projector.workers")

ROLE_ENV = "PROJECTOR_WORKER_ROLE"  # "http" or "writer"
NAME_ENV = "PROJECTOR_WORKER_NAME"  # e.g. http-2, shown in each of its log lines
PIPE_ENV = "PROJECTOR_WORKER_PIPE"  # a pipe's read end: its EOF means the supervisor is gone
SOCKET_ENV = "PROJECTOR_WRITER_SOCKET"  # SQLite: where the writer process listens
HTTP, WRITER = "http", "writer"


@dataclass(frozen=True)
class WorkerRole:
    """What the supervisor told one child: its role, name, pipe and the writer's socket."""

    role: str
    name: str
    supervisor_pipe: int
    writer_socket: Path | None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> WorkerRole | None:
        """This process's role, or None: an ordinary `projector serve`."""
        role = environ.get(ROLE_ENV)
        if role is None:
            return None
        if role not in (HTTP, WRITER) or not environ.get(PIPE_ENV, "").isdigit():
            raise ConfigError(
                f"{ROLE_ENV} is set, but `projector serve --workers N` sets it (with "
                f"{PIPE_ENV}) for its own children only; unset it, and use --workers or "
                "PROJECTOR_WORKERS to run several processes"
            )
        socket = environ.get(SOCKET_ENV)
        return cls(
            role,
            environ.get(NAME_ENV, role),
            int(environ[PIPE_ENV]),
            Path(socket) if socket else None,
        )


def watch_supervisor(pipe: int, stop: Callable[[], None]) -> None:
    """Call `stop` when the supervisor is gone, even killed by SIGKILL: the pipe reaches EOF."""
    loop = asyncio.get_running_loop()

    def readable() -> None:
        # The supervisor never writes: readable means every write end closed with it.
        with contextlib.suppress(BlockingIOError):
            if os.read(pipe, 1):
                return
        loop.remove_reader(pipe)
        logger.warning("supervisor_gone", action="stopping")
        stop()

    loop.add_reader(pipe, readable)


async def run_writer(settings: Settings, worker: WorkerRole) -> None:
    """The SQLite writer process: the write lane, projector and alerts, served on the socket."""
    assert worker.writer_socket is not None
    assert isinstance(settings.db, Path)
    observed = Metrics()
    alert_loop: AlertLoop | None = None

    def read_models_changed() -> None:
        # Counted first: the appends this change covers are answered after this returns.
        change_count.bump()
        lane_server.read_models_changed()
        if alert_loop is not None:
            alert_loop.wake()

    storage = SqliteStorage(
        settings.db,
        # Every worker may have max_pending deliveries waiting here.
        max_pending=settings.max_pending * settings.workers,
        on_read_models_changed=read_models_changed,
        on_batch=observed.commit_batch_size.observe,
    )
    lane_server = LaneServer(storage.log, worker.writer_socket)
    change_count = SharedChangeCount(change_count_path(worker.writer_socket))
    try:
        await storage.open()
    except OPEN_ERRORS as exc:
        raise unusable(settings.db, f"cannot open the log ({exc})") from None
    alert_loop = alert_loop_for(settings, storage, observed)
    tasks = [asyncio.create_task(project_continuously(storage.projector, read_models_changed))]
    if alert_loop is not None:
        tasks.append(asyncio.create_task(alert_loop.run()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Ctrl-C reaches the whole process group: the writer leaves it to the supervisor, which
    # stops it after the HTTP workers, so their last deliveries still commit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    orphaned = asyncio.Event()

    def supervisor_gone() -> None:
        orphaned.set()
        stop.set()

    watch_supervisor(worker.supervisor_pipe, supervisor_gone)
    await lane_server.start()
    logger.info("writer_listening", db=storage.description)
    await stop.wait()
    logger.info("shutting_down", reason="signal")
    # The HTTP workers stopped first (the supervisor's order), so no answer is cut off here.
    await lane_server.close()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await storage.close()
    change_count.close()
    if orphaned.is_set():
        # The supervisor died (even by SIGKILL) and cannot remove its private directory:
        # empty once the socket and the count are gone, it goes with the writer.
        with contextlib.suppress(OSError):
            change_count_path(worker.writer_socket).unlink()
            worker.writer_socket.parent.rmdir()
    logger.info("stopped")

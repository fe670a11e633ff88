"""The writer process's side of the socket: HTTP workers' appends go to its write lane.

Each append is answered once its batch has committed, with its seq and duplicate_of, as the
lane answers in one process. Every connected worker is told when the read models change,
before any answer that follows the change, so a worker's answer cache is never stale after
an acknowledgement it relays.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from projector.storage.port import Overloaded
from projector.storage.rows import Appended
from projector.storage.sqlite import frames
from projector.storage.sqlite.frames import FrameProtocol, Message
from projector.storage.sqlite.writer import WriteLane

logger = structlog.get_logger("projector.writer")


class LaneServer:
    """Serves the write lane on a Unix socket at `path`, readable by this user only."""

    def __init__(self, lane: WriteLane, path: Path) -> None:
        self._lane = lane
        self._path = path
        self._peers: set[FrameProtocol] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        # A socket left by a writer that was killed: nobody answers on it any more.
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        previous = os.umask(0o177)  # the socket is created 0600, never readable by others
        try:
            self._server = await asyncio.get_running_loop().create_unix_server(
                self._connected, path=str(self._path)
            )
        finally:
            os.umask(previous)

    def read_models_changed(self) -> None:
        """Tell every worker, ahead of the answers that follow, to drop its cached answers."""
        for peer in self._peers:
            peer.send((frames.CHANGED, 0, None))

    async def close(self) -> None:
        """Stop listening and hang up on every worker (their waiting appends get 503)."""
        if self._server is not None:
            self._server.close()
        for peer in list(self._peers):
            peer.close()
        if self._server is not None:
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()

    def _connected(self) -> FrameProtocol:
        peer: FrameProtocol

        def received(message: Message) -> None:
            self._received(peer, message)

        peer = FrameProtocol(received, self._peers.discard)
        self._peers.add(peer)
        return peer

    def _received(self, peer: FrameProtocol, message: Message) -> None:
        kind, ident, payload = message
        work: Awaitable[Any]
        try:
            if kind == frames.APPEND:
                work = self._lane.submit(payload)  # a future: no task per delivery
            elif kind == frames.PROBE:
                work = self._lane.probe_write()
            else:
                logger.error("writer_frame_unknown", kind=str(kind)[:40])
                peer.close()
                return
        except Exception as exc:  # Overloaded or StorageUnavailable, raised before queueing
            work = asyncio.get_running_loop().create_future()
            work.set_exception(exc)
        asyncio.ensure_future(work).add_done_callback(partial(_answer, peer, ident))


def _answer(peer: FrameProtocol, ident: int, done: asyncio.Future[Appended | None]) -> None:
    try:
        result = done.result()
    except Overloaded as exc:
        peer.send((frames.FAILED, ident, (frames.OVERLOADED, str(exc))))
    except (Exception, asyncio.CancelledError) as exc:  # unavailable, the probe's error: 503
        peer.send((frames.FAILED, ident, (frames.UNAVAILABLE, str(exc) or type(exc).__name__)))
    else:
        answer = None if result is None else (result.seq, result.duplicate_of)
        peer.send((frames.DONE, ident, answer))

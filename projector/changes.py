"""`GET /v1/changes`: read-model changes pushed as Server-Sent Events, replayed from the log."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import structlog
from aiohttp import web

from projector.api import environment_param, query_params
from projector.config import Settings
from projector.http import ApiError
from projector.storage.port import ChangedRow, Reads

logger = structlog.get_logger("projector.changes")

# Deliveries a stream reads from the log at once; it writes their events before the next read.
STREAM_BATCH = 200
# The hub re-reads the projections' position at least this often, woken or not.
REFRESH_SECONDS = 1.0
# After a wake-up the hub lets more commits gather: one position read serves them all.
GATHER_SECONDS = 0.02
RETRY_AFTER_SECONDS = 5
# What one stream may hold unsent: the kernel's send buffer is fixed at this (Linux doubles
# it; left alone it grows to megabytes) and asyncio pauses the writer past 64 KiB more, so a
# stream holds a few hundred KiB at most; a write that cannot drain in time cuts it off.
STREAM_SOCKET_BUFFER = 64 * 1024
# A cut-off or shut-down stream's client gets this long to read what was already sent.
GOODBYE_GRACE_SECONDS = 10.0
_SEQ_VALUE = "0123456789"
EVENT_STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # nginx buffers answers by default, which would hold events back: this turns it off.
    "X-Accel-Buffering": "no",
}


class ChangeHub:
    """Where the projections stand, read once for every open stream; and the open streams.

    A stream never reads past `folded`, the position every projection has reached, so it
    sends only what the read models already hold.
    """

    def __init__(self, reads: Reads, settings: Settings) -> None:
        self.reads = reads
        self.max_streams = settings.max_streams
        self.heartbeat_seconds = settings.stream_heartbeat_seconds
        self.write_timeout_seconds = settings.stream_write_timeout_seconds
        self.folded = 0
        self.open_streams = 0
        self.closing = False
        self._moved = asyncio.Event()
        self._stale = asyncio.Event()

    def read_models_changed(self) -> None:
        """The projector folded something: re-read the position soon."""
        self._stale.set()

    def moved(self) -> asyncio.Event:
        """Set when `folded` next moves (or the hub closes); taken before reading it."""
        return self._moved

    def close(self) -> None:
        """Server shutdown: every stream says goodbye with its position and ends."""
        self.closing = True
        self._notify()

    def _notify(self) -> None:
        self._moved.set()
        self._moved = asyncio.Event()

    async def refresh(self) -> None:
        """Read the projections' common position; wake the streams if it moved."""
        folded = await self.reads.folded_position()
        if folded != self.folded:
            self.folded = folded
            self._notify()

    async def run(self) -> None:
        """Follow the projections' position for as long as the server runs."""
        while True:
            self._stale.clear()
            try:
                await self.refresh()
            except Exception as exc:  # e.g. locked by a rebuild's swap: read again shortly
                logger.error("change_position_read_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH_SECONDS):
                    await self._stale.wait()
            await asyncio.sleep(GATHER_SECONDS)


CHANGE_HUB = web.AppKey("change_hub", ChangeHub)


class SlowClient(Exception):
    """A write did not drain within the write timeout: the client does not keep up."""


class ChangeStream:
    """One client's stream: events for the deliveries past `position`, in log order."""

    def __init__(
        self,
        request: web.Request,
        response: web.StreamResponse,
        environment: str,
        account: str | None,
        position: int,
    ) -> None:
        self.request, self.response = request, response
        self.environment, self.account = environment, account
        self.hub = request.app[CHANGE_HUB]
        self.position = position  # every event up to this seq has been handed to the socket
        self.last_write = time.monotonic()

    async def run(self) -> None:
        """Send until the server shuts down; SlowClient or ConnectionError end it early."""
        # The first bytes also send the headers: a client knows at once the stream is open.
        # `id:` without data is no event, but sets the client's Last-Event-ID: one that drops
        # before its first event resumes from here, not from whatever is "now" by then.
        await self._send(f": changes after seq {self.position}\nid: {self.position}\n\n")
        while not self.hub.closing and not self._client_gone():
            moved = self.hub.moved()
            if self.position < self.hub.folded:
                await self._catch_up(self.hub.folded)
                continue
            idle = time.monotonic() - self.last_write
            try:
                async with asyncio.timeout(max(0.0, self.hub.heartbeat_seconds - idle)):
                    await moved.wait()
            except TimeoutError:  # a comment line: proxies see traffic, clients ignore it
                await self._send(": heartbeat\n\n")
        if self.hub.closing:
            await self.goodbye("the server is shutting down")

    def _client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def _catch_up(self, until: int) -> None:
        """Send the events of one batch of deliveries past `position`, up to `until`."""
        rows = await self._read(until)
        current: dict[tuple[str, str], str | None] = {}  # one read per account or run a batch
        for seq, kind, account, instance in rows:
            # A clean delivery names the account (connections) or the instance (runs) it is of.
            key = (
                ("connection", str(account))
                if kind == "connection"
                else ("workflow_run", str(instance))
            )
            if key not in current:
                current[key] = await self._answer(*key)
            data = current[key]
            if data is None:  # a run its fold raised on: the read models hold nothing to send
                continue
            self.position = seq
            await self._send(f"id: {seq}\nevent: {key[0]}\ndata: {data}\n\n")
            if self.hub.closing:
                return
        self.position = rows[-1][0] if len(rows) == STREAM_BATCH else until

    async def _read(self, until: int) -> list[ChangedRow]:
        """The next clean deliveries: exactly those the projectors fold (a change each).

        Their kind and key columns, not their bodies: a batch holds a few short rows
        whatever size the bodies were, and nothing is parsed again.
        """
        return await self.hub.reads.changed_rows(
            self.environment, self.account, self.position, until, STREAM_BATCH
        )

    async def _answer(self, kind: str, key: str) -> str | None:
        """The answer as GET would give it now (JSON), or None for a run not in the models."""
        if kind == "connection":
            banner = await self.hub.reads.account_connections(self.environment, key)
            return banner.model_dump_json()
        run = await self.hub.reads.run_summary(self.environment, key)
        return None if run is None else run.model_dump_json()

    async def _send(self, text: str) -> None:
        try:
            async with asyncio.timeout(self.hub.write_timeout_seconds):
                await self.response.write(text.encode())
        except TimeoutError:
            raise SlowClient from None
        self.last_write = time.monotonic()

    async def goodbye(self, reason: str) -> None:
        """A last comment with the position to resume from, then the end of the stream."""
        position = self.position
        line = f": {reason}; resume with Last-Event-ID: {position}\nid: {position}\n\n"
        self.response.force_close()
        try:
            # After a write timed out, aiohttp's count of unsent bytes starts again at 0, so
            # these small writes only join the socket's buffer; bounded anyway, in case.
            async with asyncio.timeout(1.0):
                await self.response.write(line.encode())
                await self.response.write_eof()
        except (TimeoutError, ConnectionError):
            transport = self.request.transport
            if transport is not None:
                transport.close()  # sends what is buffered, then closes
                # A client that reads nothing would keep it forever: drop it after a grace.
                asyncio.get_running_loop().call_later(GOODBYE_GRACE_SECONDS, transport.abort)


def _last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID")
    if raw is None or raw.strip() == "":  # EventSource sends an empty one before any event
        return None
    raw = raw.strip()
    if not (1 <= len(raw) <= 18 and all(c in _SEQ_VALUE for c in raw)):
        raise ApiError(
            400,
            "invalid_last_event_id",
            f"Last-Event-ID {raw[:40]!r} is not a seq; send the `id:` of the last event you "
            "received, or no Last-Event-ID to start from now",
        )
    return int(raw)


def _bound_send_buffer(request: web.Request) -> None:
    sock = None if request.transport is None else request.transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SOCKET_BUFFER)


async def stream_changes(request: web.Request) -> web.StreamResponse:
    """GET /v1/changes: one event per folded delivery after Last-Event-ID (or from now)."""
    params = query_params(request, ("linked_account_id",))
    environment = environment_param(params)
    resume = _last_event_id(request)
    hub = request.app[CHANGE_HUB]
    if hub.open_streams >= hub.max_streams:
        raise ApiError(
            503,
            "too_many_streams",
            f"{hub.max_streams} change streams are open, the most PROJECTOR_MAX_STREAMS allows;"
            f" reconnect after {RETRY_AFTER_SECONDS} seconds",
            {"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    folded, head = await hub.reads.positions()
    if resume is not None and resume > head:
        raise ApiError(
            400,
            "invalid_last_event_id",
            f"Last-Event-ID {resume} is past this log's head ({head}): it comes from another "
            "log; reconnect without Last-Event-ID to start from now",
        )
    hub.open_streams += 1
    try:
        response = web.StreamResponse(headers=EVENT_STREAM_HEADERS)
        await response.prepare(request)
        _bound_send_buffer(request)
        account = params.get("linked_account_id")
        start = folded if resume is None else resume
        stream = ChangeStream(request, response, environment, account, start)
        try:
            await stream.run()
        except SlowClient:
            logger.warning("change_stream_cut_off", reason="slow_client", position=stream.position)
            await stream.goodbye("cut off: this client read too slowly")
        except ConnectionError:  # the client went away: nothing to say to it
            pass
        except Exception:  # the answer has begun: json_errors can no longer answer a 500
            logger.exception("change_stream_failed", position=stream.position)
            await stream.goodbye("an unexpected error, logged by the server")
    finally:
        hub.open_streams -= 1
    return response


def add_change_stream(app: web.Application, settings: Settings, reads: Reads) -> ChangeHub:
    """Register GET /v1/changes; the caller calls `read_models_changed` after each fold."""
    hub = ChangeHub(reads, settings)
    app[CHANGE_HUB] = hub

    following: list[asyncio.Task[None]] = []

    # on_startup runs after every cleanup context (the storage's): the readers are open.
    async def follow_positions(app: web.Application) -> None:
        following.append(asyncio.create_task(hub.run(), name="change_hub"))

    # on_shutdown runs before the server waits for handlers, and before the readers close.
    async def end_streams(app: web.Application) -> None:
        hub.close()
        for task in following:
            task.cancel()
        await asyncio.gather(*following, return_exceptions=True)

    app.on_startup.append(follow_positions)
    app.on_shutdown.append(end_streams)
    app.router.add_get("/v1/changes", stream_changes)
    return hub

"""Length-prefixed frames between the writer process and the HTTP workers, on a Unix socket.

Each frame is a 4-byte big-endian length and a pickled list of `(kind, id, payload)`
messages: those sent in one turn of the event loop, pickled together (one pickle of many
deliveries costs far less than one per delivery), BATCH at most. Pickle
is acceptable only because the socket is private to the user's own processes: it lives in a
0700 directory the supervisor made, as a 0600 file, so only the same user, who could run any
code as these processes anyway, can connect. Never listen with this on a shared path.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from collections.abc import Callable
from typing import Any, cast

HEADER = struct.Struct(">I")
# Messages per frame at most: with bodies of PROJECTOR_MAX_BODY_BYTES (64 MiB at most), a
# frame stays well within the header's 4 GiB.
BATCH = 32

# Worker -> writer: append a NewDelivery; probe the write path (readiness).
APPEND = "append"
PROBE = "probe"
# Writer -> worker: the request `id` committed (payload: (seq, duplicate_of), or None for a
# probe); it failed (payload: (OVERLOADED or UNAVAILABLE, reason)); the read models changed.
DONE = "done"
FAILED = "failed"
CHANGED = "changed"
OVERLOADED = "overloaded"
UNAVAILABLE = "unavailable"

Message = tuple[str, int, Any]


class FrameProtocol(asyncio.Protocol):
    """Reads frames into `on_frame`, in order; `send` queues one, written with its neighbours."""

    def __init__(
        self,
        on_frame: Callable[[Message], None],
        on_lost: Callable[[FrameProtocol], None] = lambda peer: None,
    ) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._buffer = bytearray()
        self._out: list[Message] = []
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._on_lost(self)

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def send(self, message: Message) -> None:
        """Queue `message`; everything queued in one turn of the loop goes in one frame."""
        if not self.open:
            return  # the peer is gone: connection_lost tells whoever waits for an answer
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(message)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is None or self._transport.is_closing():
            return
        for start in range(0, len(out), BATCH):
            payload = pickle.dumps(out[start : start + BATCH], protocol=pickle.HIGHEST_PROTOCOL)
            self._transport.writelines((HEADER.pack(len(payload)), payload))

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, offset)
            end = offset + HEADER.size + size
            if len(buffer) < end:
                break
            messages = pickle.loads(buffer[offset + HEADER.size : end])  # noqa: S301 (private)
            offset = end
            for message in messages:
                self._on_frame(message)
        del buffer[:offset]

"""How often the read models changed, shared by the writer process and its HTTP workers.

The writer's CHANGED frames reach each worker soon, but not before the next request to
that worker: a delivery acknowledged through one worker could meet an answer another
worker cached before it. So the writer also bumps this count, an 8-byte file both map,
before it answers the appends a change covers, and every worker compares it on each
cached read.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

_COUNT = struct.Struct("<Q")


def change_count_path(writer_socket: Path) -> Path:
    """Where the count lives: beside the writer's socket, in the supervisor's private directory."""
    return writer_socket.with_name("read-model-changes")


class SharedChangeCount:
    """The count in `path`, created (0600, zero) by whichever process opens it first."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._map: mmap.mmap | None = None

    def _mapped(self) -> mmap.mmap:
        if self._map is None:
            # Never truncated: a restarted writer, or a late worker, keeps counting from here.
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < _COUNT.size:
                    os.ftruncate(fd, _COUNT.size)
                self._map = mmap.mmap(fd, _COUNT.size)
            finally:
                os.close(fd)
        return self._map

    def read(self) -> int:
        """The count now. A read racing a bump may see either value, or a torn one; it cannot
        come after an acknowledgement that followed the bump, so any of them is safe."""
        return int(_COUNT.unpack_from(self._mapped())[0])

    def bump(self) -> None:
        """One more change (the writer process only: one writer, so no lost update)."""
        _COUNT.pack_into(self._mapped(), 0, (self.read() + 1) % 2**64)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

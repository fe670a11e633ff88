"""The read-model change count the SQLite writer process shares with its HTTP workers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from projector.storage.sqlite.change_count import SharedChangeCount, change_count_path


def test_a_bump_by_the_writer_is_read_by_another_mapping_of_the_file(tmp_path: Path) -> None:
    """Two mappings of one file, as the writer process and a worker hold it."""
    path = change_count_path(tmp_path / "writer.sock")
    writer, worker = SharedChangeCount(path), SharedChangeCount(path)
    assert worker.read() == 0
    writer.bump()
    writer.bump()
    assert worker.read() == 2
    writer.close()
    worker.close()


def test_a_restarted_writer_counts_on_from_where_the_last_one_stopped(tmp_path: Path) -> None:
    """Never truncated: a worker that kept its mapping across the restart sees every bump."""
    path = tmp_path / "read-model-changes"
    worker, first = SharedChangeCount(path), SharedChangeCount(path)
    first.bump()
    first.close()
    second = SharedChangeCount(path)
    second.bump()
    assert worker.read() == 2
    second.close()
    worker.close()


def test_the_count_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "read-model-changes"
    previous = os.umask(0)  # the mode must not depend on the umask it starts under
    try:
        count = SharedChangeCount(path)
        count.read()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    count.close()

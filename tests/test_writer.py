"""The write lane: one writer thread, group commit, back-pressure and storage failures."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from projector.storage.rows import Appended, NewDelivery
from projector.storage.sqlite import log, projection
from projector.storage.sqlite.writer import (
    MAX_BATCH,
    Overloaded,
    ProjectAppended,
    StorageUnavailable,
    WriteLane,
)
from tests.storage_support import (
    catch_up,
    open_log,
    open_projected,
    read_models,
    rebuilt,
    sample_deliveries,
)

DELIVERIES = sample_deliveries()


class Commits:
    """An on_commit callback that counts the commits."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, projected: bool) -> None:
        self.count += 1


def unique(index: int) -> NewDelivery:
    """A delivery no other one in the test repeats."""
    base = DELIVERIES[index % len(DELIVERIES)]
    return replace(base, event_key=f"unique-{index}")


def stored_seqs(path: Path) -> list[int]:
    """The seqs in the log, read on a connection of its own."""
    conn = log.connect(path, readonly=True)
    try:
        return [row[0] for row in conn.execute("SELECT seq FROM deliveries ORDER BY seq")]
    finally:
        conn.close()


@pytest.fixture
def commits() -> Commits:
    return Commits()


@pytest.fixture
async def lane(db_path: Path, commits: Commits) -> AsyncIterator[WriteLane]:
    open_log(db_path).close()
    running = WriteLane(db_path, 10_000, commits)
    await running.open()
    yield running
    await running.close()


async def test_concurrent_appends_get_distinct_gap_free_seqs(
    lane: WriteLane, db_path: Path
) -> None:
    """300 appends at once resolve with seqs 1..300, and the log holds exactly those rows."""
    results = await asyncio.gather(*(lane.append(unique(i)) for i in range(300)))
    assert sorted(r.seq for r in results) == list(range(1, 301))
    assert all(r.duplicate_of is None for r in results)
    assert stored_seqs(db_path) == list(range(1, 301))


async def test_appends_waiting_together_share_commits_of_at_most_max_batch(db_path: Path) -> None:
    """300 appends queued while the writer is busy take two commits: MAX_BATCH, then the rest."""
    assert MAX_BATCH < 300  # else one commit would take them all and this proves less
    waiting_after_commit: list[int] = []
    lane = WriteLane(db_path, 10_000, lambda projected: waiting_after_commit.append(lane.pending))
    open_log(db_path).close()
    await lane.open()
    try:
        inside, release = threading.Event(), threading.Event()

        def hold_the_writer(conn: sqlite3.Connection) -> bool:
            inside.set()
            return release.wait(30)

        held = asyncio.ensure_future(lane.run(hold_the_writer))
        assert await asyncio.to_thread(inside.wait, 30), "the writer never ran the job"
        appends = [asyncio.create_task(lane.append(unique(i))) for i in range(300)]
        for _ in range(1000):  # bounded: each task queues its delivery on its first step
            if lane.pending == 300:
                break
            await asyncio.sleep(0.001)
        assert lane.pending == 300
        release.set()
        assert await held is True
        results = await asyncio.gather(*appends)
    finally:
        await lane.close()
    assert [r.seq for r in results] == list(range(1, 301))
    # Each commit settles its whole batch at once: what is still waiting drops by its size.
    assert waiting_after_commit == [300 - MAX_BATCH, 0]
    assert stored_seqs(db_path) == list(range(1, 301))


async def test_each_append_is_resolved_with_its_own_delivery_seq(
    lane: WriteLane, db_path: Path
) -> None:
    """The seq a caller gets is the row that holds its delivery."""
    results = await asyncio.gather(*(lane.append(unique(i)) for i in range(50)))
    conn = log.connect(db_path, readonly=True)
    by_seq = dict(conn.execute("SELECT seq, event_key FROM deliveries").fetchall())
    assert [by_seq[r.seq] for r in results] == [f"unique-{i}" for i in range(50)]


async def test_a_repeat_appended_through_the_lane_reports_its_original(lane: WriteLane) -> None:
    """The lane hands back append_batch's duplicate_of."""
    first = await lane.append(DELIVERIES[0])
    again = await lane.append(DELIVERIES[0])
    assert first == Appended(1, None)
    assert again == Appended(2, 1)


async def test_appends_beyond_max_pending_are_refused_with_overloaded(db_path: Path) -> None:
    """With max_pending=1 some of several simultaneous appends raise Overloaded; the rest land."""
    lane = WriteLane(db_path, 1, Commits())
    open_log(db_path).close()
    await lane.open()
    try:
        tasks = [asyncio.create_task(lane.append(unique(i))) for i in range(10)]
        await asyncio.gather(*tasks, return_exceptions=True)
        refused = [t for t in tasks if isinstance(t.exception(), Overloaded)]
        stored = [t.result() for t in tasks if t.exception() is None]
        assert refused
        assert all(t.exception() is None or isinstance(t.exception(), Overloaded) for t in tasks)
        assert sorted(a.seq for a in stored) == stored_seqs(db_path)
        assert len(stored) + len(refused) == 10
        assert (await lane.append(unique(99))).seq == len(stored) + 1
    finally:
        await lane.close()


async def test_a_full_database_raises_storage_unavailable_and_stores_nothing(
    lane: WriteLane, db_path: Path, commits: Commits
) -> None:
    """When the database cannot grow, the append fails with StorageUnavailable, head unchanged."""
    await lane.append(unique(0))
    pages = await lane.run(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await lane.run(lambda c: c.execute(f"PRAGMA max_page_count = {pages}").fetchall())
    large = replace(unique(1), body=b"x" * 200_000)
    with pytest.raises(StorageUnavailable, match="full"):
        await lane.append(large)
    assert await lane.run(log.head) == 1
    assert stored_seqs(db_path) == [1]
    assert commits.count == 1


async def test_the_lane_recovers_once_the_database_can_store_again(
    lane: WriteLane, db_path: Path
) -> None:
    """After a StorageUnavailable, raising the limit lets the same append succeed at head + 1."""
    await lane.append(unique(0))
    pages = await lane.run(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await lane.run(lambda c: c.execute(f"PRAGMA max_page_count = {pages}").fetchall())
    large = replace(unique(1), body=b"x" * 200_000)
    with pytest.raises(StorageUnavailable):
        await lane.append(large)
    await lane.run(lambda c: c.execute("PRAGMA max_page_count = 1073741823").fetchall())
    assert await lane.append(large) == Appended(2, None)
    assert stored_seqs(db_path) == [1, 2]


async def test_a_failed_commit_fails_every_append_of_its_batch(
    lane: WriteLane, db_path: Path
) -> None:
    """One bad delivery in a group commit fails the whole group; none of it is stored."""
    await lane.append(unique(0))
    broken = replace(unique(1), body=None)  # type: ignore[arg-type]
    outcomes = await asyncio.gather(
        lane.append(unique(2)),
        lane.append(broken),
        lane.append(unique(3)),
        return_exceptions=True,
    )
    assert all(isinstance(o, StorageUnavailable) for o in outcomes)
    assert stored_seqs(db_path) == [1]


async def test_run_executes_a_job_on_the_writer_connection(lane: WriteLane) -> None:
    """run() hands the job the lane's own connection and returns its result."""
    await lane.append(unique(0))
    assert await lane.run(log.head) == 1
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        await lane.run(lambda c: c.execute("DELETE FROM deliveries"))


async def test_close_commits_the_queued_appends_before_returning(db_path: Path) -> None:
    """Appends already queued when close() is called are stored and resolved."""
    lane = WriteLane(db_path, 10_000, Commits())
    open_log(db_path).close()
    await lane.open()
    tasks = [asyncio.create_task(lane.append(unique(i))) for i in range(40)]
    await asyncio.sleep(0)  # each task queues its delivery on its first step
    assert lane.pending == 40  # all of them, so close() finds every one queued
    await lane.close()
    assert all(t.done() and t.exception() is None for t in tasks)
    assert sorted(t.result().seq for t in tasks) == list(range(1, 41))
    assert stored_seqs(db_path) == list(range(1, 41))


async def test_an_append_after_close_raises_storage_unavailable(lane: WriteLane) -> None:
    """A closed lane refuses appends instead of queueing them forever."""
    await lane.close()
    with pytest.raises(StorageUnavailable):
        await lane.append(unique(0))


async def test_run_before_open_raises(db_path: Path) -> None:
    """The lane has no connection until open()."""
    lane = WriteLane(db_path, 10, Commits())
    with pytest.raises(RuntimeError, match="not open"):
        await lane.run(log.head)
    await lane.close()


# --- folding in the commit -------------------------------------------------------------------


class Projections:
    """on_commit for a lane that folds: records whether each commit folded its batch."""

    def __init__(self) -> None:
        self.folded: list[bool] = []

    def __call__(self, projected: bool) -> None:
        self.folded.append(projected)


async def projecting_lane(
    path: Path, on_commit: Projections, project: ProjectAppended
) -> WriteLane:
    open_projected(path).close()
    lane = WriteLane(path, 10_000, on_commit, project=project)
    await lane.open()
    return lane


async def test_a_lane_that_projects_has_folded_each_delivery_when_its_append_returns(
    db_path: Path, tmp_path: Path
) -> None:
    """No projection lag: the commit that stores a batch folds it too, in one transaction."""
    folded = Projections()
    lane = await projecting_lane(db_path, folded, projection.project_appended)
    try:
        for start in range(0, 120, 30):
            await asyncio.gather(*(lane.append(d) for d in DELIVERIES[start : start + 30]))
            tables = await lane.run(read_models)
            assert tables == rebuilt(
                tmp_path / f"expected-{start}.sqlite3", DELIVERIES[: start + 30]
            )
        assert folded.folded
        assert all(folded.folded)
        assert lane.take_committed() == {}  # nothing is left for the projector
    finally:
        await lane.close()


async def test_a_fold_that_fails_in_the_commit_still_stores_the_deliveries(
    db_path: Path, tmp_path: Path
) -> None:
    """A read-model failure never costs a delivery: it commits unfolded, for the projector."""

    def broken(conn: sqlite3.Connection, known: Mapping[int, log.Committed]) -> bool:
        projection.project_appended(conn, known)  # writes, then fails: all of it rolls back
        raise sqlite3.OperationalError("read model broken")

    folded = Projections()
    lane = await projecting_lane(db_path, folded, broken)
    try:
        results = await asyncio.gather(*(lane.append(d) for d in DELIVERIES[:40]))
        assert stored_seqs(db_path) == sorted(r.seq for r in results) == list(range(1, 41))
        assert folded.folded
        assert not any(folded.folded)
        assert sorted(lane.take_committed()) == list(range(1, 41))  # for the projector
        assert await lane.run(read_models) == {"connections": [], "workflow_runs": []}
        await lane.run(catch_up)
        assert await lane.run(read_models) == rebuilt(tmp_path / "x.sqlite3", DELIVERIES[:40])
    finally:
        await lane.close()


async def test_a_lane_behind_its_projections_leaves_the_fold_to_the_projector(
    db_path: Path, tmp_path: Path
) -> None:
    """Deliveries logged while the projections lag (another process) are not folded out of
    order: the commit skips its fold and the projector catches up from the log."""
    other = open_projected(db_path)
    log.append_batch(other, DELIVERIES[:10])  # appended, not folded
    other.close()
    folded = Projections()
    lane = WriteLane(db_path, 10_000, folded, project=projection.project_appended)
    await lane.open()
    try:
        await lane.append(DELIVERIES[10])
        assert folded.folded == [False]
        await lane.run(catch_up)
        assert await lane.run(read_models) == rebuilt(tmp_path / "x.sqlite3", DELIVERIES[:11])
        await lane.append(DELIVERIES[11])  # caught up again: this one is folded in its commit
        assert folded.folded == [False, True]
    finally:
        await lane.close()

"""The storage port's contract, written once: each engine's test class only makes a database.

`StorageContract` gathers every promise (appends here, reads and the chain in their own
modules); a subclass says how to make a fresh, empty location of its engine and how to
alter a stored row behind the adapter's back. Every test goes through the port alone.
"""

from __future__ import annotations

import asyncio
import base64

import pytest

from projector.storage.location import Location
from projector.storage.port import Overloaded
from projector.storage.rows import row_content
from tests.contract_chain import ChainContract
from tests.contract_reads import ReadsContract
from tests.contract_support import (
    ENVIRONMENTS,
    append_folding,
    every_answer,
    fold_all,
    maintaining,
    serving,
    stream,
)
from tests.storage_support import ODD_BODY, new_delivery

# Signed with the live key but naming the test environment: stored, flagged, never folded.
MISMATCHED = (
    b'{"linked_account_id":"acct_flagged","org_id":"o","environment":"test","type":"General",'
    b'"event":"Connection Expired","slug":"gmail","createdAt":"Mon, 01 Jun 2026 05:42:56 GMT"}'
)
UNKNOWN_EVENT = (
    b'{"linked_account_id":"acct_unknown","org_id":"o","environment":"live","type":"General",'
    b'"event":"Connection Renamed","slug":"gmail","createdAt":"Mon, 01 Jun 2026 05:42:56 GMT"}'
)
CLEAN = (
    b'{"linked_account_id":"acct_clean","org_id":"o","environment":"live","type":"General",'
    b'"event":"Connection Created","slug":"gmail","createdAt":"Mon, 01 Jun 2026 05:42:56 GMT"}'
)


class StorageContract(ReadsContract, ChainContract):
    """What every adapter of the storage port promises; subclassed once per engine."""

    # --- appends -----------------------------------------------------------------------------

    async def test_appends_get_seqs_one_to_n_in_order_and_are_stored_as_given(
        self, location: Location
    ) -> None:
        deliveries = stream()[:40]
        async with serving(location) as storage:
            appended = [await storage.log.append(d) for d in deliveries]
        assert [a.seq for a in appended] == list(range(1, 41))
        async with maintaining(location) as maintenance:
            rows = await maintenance.stored_rows(0, 100)
        assert [row.content for row in rows] == [
            row_content(a.seq, d, a.duplicate_of) for a, d in zip(appended, deliveries, strict=True)
        ]

    async def test_concurrent_appends_share_commits_and_every_one_lands(
        self, location: Location
    ) -> None:
        deliveries = stream()[:100]
        deliveries += deliveries[:20]  # repeats: some may share a commit with their first
        batches: list[int] = []
        async with serving(location, batches) as storage:
            appended = await asyncio.gather(*(storage.log.append(d) for d in deliveries))
            assert storage.log.pending == 0
        assert sorted(a.seq for a in appended) == list(range(1, 121))
        assert sum(batches) == 120
        assert len(batches) < 120  # some appends were committed together
        first_seq: dict[str, int] = {}
        for a, d in sorted(zip(appended, deliveries, strict=True), key=lambda pair: pair[0].seq):
            first = first_seq.setdefault(d.event_key, a.seq)
            assert a.duplicate_of == (None if first == a.seq else first), a
        assert sum(a.duplicate_of is not None for a in appended) >= 20
        async with maintaining(location) as maintenance:
            stored = {row.seq: row.content[6] for row in await maintenance.stored_rows(0, 200)}
        assert stored == {a.seq: d.body for a, d in zip(appended, deliveries, strict=True)}

    async def test_closing_commits_every_append_already_queued(self, location: Location) -> None:
        deliveries = stream()[:300]
        async with serving(location) as storage:
            queued = [asyncio.create_task(storage.log.append(d)) for d in deliveries]
            await asyncio.sleep(0)  # every append is queued; close() comes next
        assert sorted(a.seq for a in await asyncio.gather(*queued)) == list(range(1, 301))
        async with maintaining(location) as maintenance:
            assert (await maintenance.head())[0] == 300

    async def test_appends_beyond_max_pending_are_refused_as_overloaded(
        self, location: Location
    ) -> None:
        first, second, third = stream()[:3]
        async with serving(location, max_pending=2) as storage:
            queued = [asyncio.create_task(storage.log.append(d)) for d in (first, second)]
            await asyncio.sleep(0)  # both are queued; no commit has answered yet
            with pytest.raises(Overloaded, match="2 deliveries are waiting"):
                await storage.log.append(third)
            assert [(await task).seq for task in queued] == [1, 2]
            assert storage.log.pending == 0
            assert (await storage.log.append(third)).seq == 3

    async def test_a_reopened_log_keeps_its_rows_and_answers_and_goes_on_after_them(
        self, location: Location
    ) -> None:
        deliveries = stream()[:30]
        async with serving(location) as storage:
            await append_folding(storage, deliveries)
            before = await every_answer(storage.reads, deliveries)
        async with serving(location) as storage:
            assert await storage.reads.positions() == (30, 30)
            assert await every_answer(storage.reads, deliveries) == before
            repeat = await storage.log.append(deliveries[0])
            after = await storage.log.append(new_delivery(CLEAN, "live"))
            await fold_all(storage.projector)
            assert await storage.reads.positions() == (32, 32)
        assert (repeat.seq, repeat.duplicate_of) == (31, 1)
        assert (after.seq, after.duplicate_of) == (32, None)
        async with maintaining(location) as maintenance:
            assert (await maintenance.verify()).intact

    async def test_a_repeat_is_stored_again_as_a_duplicate_of_the_first_seq(
        self, location: Location
    ) -> None:
        first, other = stream()[:2]
        async with serving(location) as storage:
            appended = [await storage.log.append(d) for d in (first, other, first, first)]
            detail = await storage.reads.audit_event(first.environment, 4)
            page = await storage.reads.audit_events(first.environment, None, None, 0, 10, None)
        assert [(a.seq, a.duplicate_of) for a in appended] == [(1, None), (2, None), (3, 1), (4, 1)]
        assert detail is not None
        assert (detail.duplicate, detail.duplicate_of) == (True, 1)
        duplicates = {e.seq: e.duplicate for e in page.events}
        assert duplicates == {seq: seq > 2 for seq in duplicates}
        assert 3 in duplicates

    async def test_flagged_and_unknown_deliveries_are_kept_flagged_and_never_folded(
        self, location: Location
    ) -> None:
        bodies = [ODD_BODY, MISMATCHED, UNKNOWN_EVENT, CLEAN]
        async with serving(location) as storage:
            for body in bodies:
                await storage.log.append(new_delivery(body, "live"))
            await fold_all(storage.projector)
            reads = storage.reads
            flags = [(await reads.audit_event("live", seq)) for seq in range(1, 5)]
            banners = {
                (environment, account): await reads.account_connections(environment, account)
                for environment in ENVIRONMENTS
                for account in ("acct_flagged", "acct_unknown", "acct_clean")
            }
            changed = await reads.changed_rows("live", None, 0, 4, 100)
            assert await reads.positions() == (4, 4)
        assert [d and d.flags for d in flags] == [
            ["not_json"],
            ["environment_mismatch"],
            ["unknown_event"],
            [],
        ]
        assert [d and base64.b64decode(d.body_base64) for d in flags] == bodies
        assert {key: len(b.connections) for key, b in banners.items() if b.connections} == {
            ("live", "acct_clean"): 1
        }
        assert [(row.seq, row.kind, row.linked_account_id) for row in changed] == [
            (4, "connection", "acct_clean")
        ]

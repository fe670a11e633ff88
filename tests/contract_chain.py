"""The storage contract's log as a whole: fold equals rebuild, the hash chain, copying rows."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from projector.integrity import GENESIS_HASH, HASHED_COLUMNS, row_hash
from projector.storage.location import Location
from projector.storage.rows import RowsDoNotContinue, StoredRow
from tests.contract_support import (
    ContractBase,
    NewLocation,
    append_folding,
    every_answer,
    fold_all,
    maintaining,
    read_model_answers,
    runs_of,
    serving,
    stream,
)

HEADERS = HASHED_COLUMNS.index("headers")
RECEIVED_AT = HASHED_COLUMNS.index("received_at")


class ChainContract(ContractBase):
    """Read models are a pure fold of the log; the log is a hash chain that copies intact."""

    # --- fold equals rebuild -----------------------------------------------------------------

    async def test_folding_as_deliveries_arrive_answers_exactly_as_a_rebuild(
        self, location: Location
    ) -> None:
        deliveries = stream()
        async with serving(location) as storage:
            await append_folding(storage, deliveries)
            live = await every_answer(storage.reads, deliveries)
            generations = [
                p.generation for p in (await storage.reads.projection_states()).projections
            ]
            token = await storage.projector.state_token()
            async with maintaining(location) as maintenance:
                assert await maintenance.rebuild() == len(deliveries)
            # The swap is a change the service must hear of, though no delivery was folded.
            assert await storage.projector.state_token() != token
            states = await storage.reads.projection_states()
            status = await storage.reads.storage_status(datetime.now(UTC))
            assert await every_answer(storage.reads, deliveries) == live
        assert [p.generation for p in states.projections] != generations
        assert [p.position for p in states.projections] == [len(deliveries)] * 2
        swapped = {p.rebuilt_at for p in status.projections}
        assert len(swapped) == 1  # one swap for both projections
        (rebuilt_at,) = swapped
        assert isinstance(rebuilt_at, str)
        assert datetime.fromisoformat(rebuilt_at).tzinfo is not None

    async def test_any_arrival_order_with_repeats_folds_to_the_same_answers(
        self, new_location: NewLocation
    ) -> None:
        deliveries = stream()
        shuffled = deliveries + random.Random(11).sample(deliveries, 80)
        random.Random(7).shuffle(shuffled)
        async with serving(new_location()) as in_order:
            await append_folding(in_order, deliveries)
            expected = await read_model_answers(in_order.reads, deliveries)
        location = new_location()
        async with serving(location) as storage:
            await append_folding(storage, shuffled)
            assert await read_model_answers(storage.reads, deliveries) == expected
            async with maintaining(location) as maintenance:
                await maintenance.rebuild()
            assert await read_model_answers(storage.reads, deliveries) == expected
        assert len(runs_of(deliveries)) > 10

    # --- hash chain --------------------------------------------------------------------------

    async def test_verify_walks_an_intact_log_to_the_head(self, location: Location) -> None:
        deliveries = stream()
        async with serving(location) as storage:
            await append_folding(storage, deliveries)
            states = await storage.reads.projection_states()
        async with maintaining(location) as maintenance:
            verification = await maintenance.verify()
            head = await maintenance.head()
        assert verification.intact
        chain = verification.chain
        assert (chain.rows, chain.head_seq, chain.head_hash) == (len(deliveries), *head)
        assert head == (states.log_head, states.log_head_hash)
        assert head[1] != GENESIS_HASH

    async def test_verify_names_the_row_altered_behind_the_adapters_back(
        self, location: Location
    ) -> None:
        async with serving(location) as storage:
            await append_folding(storage, stream()[:120])
        await self.alter_body(location, 57)
        async with maintaining(location) as maintenance:
            verification = await maintenance.verify()
        assert not verification.intact
        assert verification.checks_passed  # the guard is back: only the chain knows
        assert verification.chain.broken_at == 57
        assert "altered" in (verification.chain.problem or "")

    # --- copying stored rows -----------------------------------------------------------------

    async def test_stored_rows_copied_into_an_empty_log_keep_the_chain_and_the_answers(
        self, new_location: NewLocation
    ) -> None:
        deliveries = stream()
        source, copy = new_location(), new_location()
        async with serving(source) as storage:
            await append_folding(storage, deliveries)
            expected = await every_answer(storage.reads, deliveries)
        async with maintaining(source) as origin, maintaining(copy, create=True) as destination:
            after = 0
            while rows := await origin.stored_rows(after, 50):
                await destination.append_stored(rows)
                after = rows[-1].seq
            assert await destination.head() == await origin.head()
            assert await destination.stored_rows(0, 1000) == await origin.stored_rows(0, 1000)
            assert (await destination.verify()).intact
        async with serving(copy) as storage:
            await fold_all(storage.projector)
            assert await every_answer(storage.reads, deliveries) == expected

    async def test_rows_that_do_not_continue_the_log_are_refused_whole(
        self, new_location: NewLocation
    ) -> None:
        source, other = new_location(), new_location()
        async with serving(source) as storage:
            await append_folding(storage, stream()[:10])
        async with maintaining(source) as origin, maintaining(other, create=True) as destination:
            rows = await origin.stored_rows(0, 10)
            with pytest.raises(RowsDoNotContinue, match=r"seq 4\b"):
                await destination.append_stored(rows[3:])
            altered = replace(rows[4], content=(*rows[4].content[:6], b"{}", *rows[4].content[7:]))
            with pytest.raises(RowsDoNotContinue, match=r"seq 5\b"):
                await destination.append_stored([*rows[:4], altered, *rows[5:]])
            assert await destination.head() == (0, GENESIS_HASH)
            await destination.append_stored(rows[:6])
            with pytest.raises(RowsDoNotContinue, match=r"seq 6\b"):
                await destination.append_stored(rows[5:])  # seq 6 again
            assert await destination.head() == (6, rows[5].row_hash)

    async def test_rows_whose_values_have_no_exact_compact_form_are_kept_exactly(
        self, new_location: NewLocation
    ) -> None:
        """Headers text that is not its dict's sorted JSON, odd instants: stored as they are."""
        source, copy = new_location(), new_location()
        async with serving(source) as storage:
            await append_folding(storage, stream()[:6])
        odd = (
            (HEADERS, '{"x-cobalt-signature": "AB", "content-type": "text/plain"}'),  # unsorted
            (HEADERS, '{"a": "1", "a": "2"}'),  # a repeated name: its dict loses one
            (HEADERS, '{"user-agent": "\\udc80 caf\\u00e9", "x": "%s"}' % ("ab" * 32)),
            (HEADERS, "not json at all"),
            (RECEIVED_AT, "2026-07-01T12:00:00.000000Z"),  # microseconds written as zeros
            (RECEIVED_AT, "2026-07-01 12:00:00"),
        )
        async with maintaining(source) as origin, maintaining(copy, create=True) as destination:
            rows = await origin.stored_rows(0, 6)
            previous, chained = GENESIS_HASH, []
            for row, (column, value) in zip(rows, odd, strict=True):
                content = list(row.content)
                content[column] = value
                previous = row_hash(previous, content)
                chained.append(StoredRow(tuple(content), previous))
            await destination.append_stored(chained)
            assert await destination.stored_rows(0, 10) == chained
            assert await destination.head() == (6, previous)
            assert (await destination.verify()).intact

"""The storage contract's reads: audit pages and filters, exact bytes, the folded answers."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from projector.integrity import GENESIS_HASH
from projector.storage.location import Location
from projector.storage.rows import NewDelivery
from tests.contract_support import (
    ENVIRONMENTS,
    ContractBase,
    accounts_of,
    append_folding,
    audit_seqs,
    connection_list,
    expected_connections,
    expected_runs,
    fold_all,
    maintaining,
    run_deliveries,
    run_list,
    serving,
    stream,
)
from tests.storage_support import RECEIVED_AT, new_delivery

# Names the sample never uses: upper and lower case, accents (composed and not), other
# scripts, a character beyond the BMP. Every engine must page them in byte (code point) order.
NAMES = ("Zoë", "zoe", "Émile", "émile", "e\u0301mile", "acct_中文", "acct_😀", "ACCT_B", "acct_a")
SLUGS = ("gmail", "Gmail", "ñandú", "app_😀")
RUNS = ("run_é", "run_E", "run_😀", "run_z", "run_中")


def named_deliveries() -> list[NewDelivery]:
    """A connection for every name and slug, and runs of the first name, all in live."""
    bodies = [
        {"linked_account_id": name, "org_id": "o", "environment": "live", "type": "General",
         "event": "Connection Expired", "slug": slug, "createdAt": "Mon, 01 Jun 2026 05:42:56 GMT"}
        for name in NAMES for slug in SLUGS
    ] + [
        {"linked_account_id": NAMES[0], "instance_id": run, "workflow_id": "wf_ü",
         "event": "Workflow Completed", "status": "COMPLETED", "environment": "live"}
        for run in RUNS
    ]  # fmt: skip
    return [new_delivery(json.dumps(b, ensure_ascii=False).encode(), "live") for b in bodies]


class ReadsContract(ContractBase):
    """Every Reads answer, on a log of the sample stream, as the log and the pure fold say."""

    async def test_a_new_database_is_an_empty_log_with_every_projection_at_zero(
        self, location: Location
    ) -> None:
        async with serving(location) as storage:
            reads = storage.reads
            assert await storage.projector.fold_new(100) == 0
            assert await reads.positions() == (0, 0)
            states = await reads.projection_states()
            status = await reads.storage_status(datetime.now(UTC))
            page = await reads.audit_events("live", None, None, 0, 10, None)
            banner = await reads.account_connections("live", "12345")
        assert (states.log_head, states.log_head_hash) == (0, GENESIS_HASH)
        assert [(p.name, p.position, p.errors) for p in states.projections] == [
            ("connection_health", 0, 0),
            ("workflow_runs", 0, 0),
        ]
        assert (status.log_head, len(status.projections), status.max_lag_seconds) == (0, 2, 0.0)
        assert (page.events, page.next_cursor, banner.connections) == ([], None, [])
        async with maintaining(location) as maintenance:
            assert await maintenance.head() == (0, GENESIS_HASH)
            assert await maintenance.stored_rows(0, 10) == []
            verification = await maintenance.verify()
        assert verification.intact
        assert verification.chain.rows == 0

    @pytest.mark.parametrize("limit", [1, 3])
    async def test_names_in_any_script_page_in_byte_order_and_are_found_exactly(
        self, location: Location, limit: int
    ) -> None:
        deliveries = named_deliveries()
        async with serving(location) as storage:
            await append_folding(storage, deliveries)
            reads = storage.reads
            listed = await connection_list(reads, "live", limit=limit)
            assert [(c["linked_account_id"], c["slug"]) for c in listed] == sorted(
                (name, slug) for name in NAMES for slug in SLUGS
            )
            for name in NAMES:
                banner = await reads.account_connections("live", name)
                assert [c.slug for c in banner.connections] == sorted(SLUGS)
                assert await audit_seqs(reads, "live", account=name) == [
                    seq for seq, d in enumerate(deliveries, 1) if d.linked_account_id == name
                ]
            runs = await run_list(reads, "live", NAMES[0], limit=limit)
            assert [r["instance_id"] for r in runs] == sorted(RUNS)
            for run in RUNS:
                summary = await reads.run_summary("live", run)
                assert summary is not None
                assert (summary.workflow_id, summary.status) == ("wf_ü", "completed")

    # --- reads -------------------------------------------------------------------------------

    async def test_audit_events_pages_and_filters_list_exactly_the_matching_deliveries(
        self, location: Location
    ) -> None:
        deliveries = stream()

        def seqs(environment: str, keep: Callable[[NewDelivery], bool] = bool) -> list[int]:
            return [
                seq
                for seq, d in enumerate(deliveries, 1)
                if d.environment == environment and keep(d)
            ]

        async with serving(location) as storage:
            await append_folding(storage, deliveries)
            reads = storage.reads
            for environment in ENVIRONMENTS:
                here = seqs(environment)
                assert await audit_seqs(reads, environment) == here
                flagged = [s for s in here if deliveries[s - 1].flags]
                assert flagged
                assert await audit_seqs(reads, environment, flagged=True) == flagged
                clean = [s for s in here if s not in flagged]
                assert await audit_seqs(reads, environment, flagged=False) == clean
            for environment, flag in (
                ("live", "not_json"),
                ("live", "unknown_event"),
                ("test", "not_json"),
                ("test", "missing_field:slug"),
            ):
                carrying = [s for s in seqs(environment) if flag in deliveries[s - 1].flags]
                assert carrying
                assert await audit_seqs(reads, environment, flag=flag) == carrying
            assert await audit_seqs(reads, "test", flag="missing_field") == []  # whole flags only
            expected = seqs("live", lambda d: d.linked_account_id == "12345")
            assert len(expected) > 1
            assert await audit_seqs(reads, "live", account="12345") == expected
            expired = seqs("live", lambda d: d.event == "Connection Expired")
            assert expired
            assert await audit_seqs(reads, "live", event="Connection Expired") == expired
            after = await reads.audit_events("live", None, None, 400, 5, None)
            assert [e.seq for e in after.events] == [s for s in seqs("live") if s > 400][:5]

    async def test_audit_event_gives_back_each_delivery_exactly_and_only_in_its_environment(
        self, location: Location
    ) -> None:
        deliveries = stream()
        async with serving(location) as storage:
            await append_folding(storage, deliveries)
            for seq, delivery in enumerate(deliveries, 1):
                detail = await storage.reads.audit_event(delivery.environment, seq)
                assert detail is not None
                assert base64.b64decode(detail.body_base64) == delivery.body
                assert (detail.seq, detail.flags, detail.received_at) == (
                    seq,
                    list(delivery.flags),
                    RECEIVED_AT,
                )
                assert (detail.key_id, detail.signed_as, detail.headers) == (
                    delivery.key_id,
                    "raw",
                    delivery.headers,
                )
                other = "test" if delivery.environment == "live" else "live"
                assert await storage.reads.audit_event(other, seq) is None
            assert await storage.reads.audit_event("live", len(deliveries) + 1) is None

    async def test_connection_and_run_answers_are_the_pure_fold_of_the_stream(
        self, location: Location
    ) -> None:
        deliveries = stream()
        connections, runs = expected_connections(deliveries), expected_runs(deliveries)
        async with serving(location) as storage:
            await append_folding(storage, deliveries)
            reads = storage.reads
            for environment, account in accounts_of(deliveries):
                banner = await reads.account_connections(environment, account)
                wanted = connections.get((environment, account), [])
                assert [c.model_dump() for c in banner.connections] == wanted
                assert banner.needs_reconnect is any(c["needs_reconnect"] for c in wanted)
                assert await run_list(reads, environment, account) == [
                    run
                    for key, run in sorted(runs.items())
                    if key[0] == environment and run["linked_account_id"] == account
                ]
            for environment in ENVIRONMENTS:
                assert [
                    (c["linked_account_id"], c["slug"])
                    for c in await connection_list(reads, environment)
                ] == sorted(
                    (a, c["slug"])
                    for (e, a), cs in connections.items()
                    if e == environment
                    for c in cs
                )
            for (environment, instance), run in runs.items():
                delivered = await run_deliveries(reads, environment, instance)
                assert delivered is not None
                assert [d["seq"] for d in delivered] == [
                    seq
                    for seq, d in enumerate(deliveries, 1)
                    if (d.environment, d.instance_id) == (environment, instance)
                ]
                summary = await reads.run_summary(environment, instance)
                assert summary is not None
                assert summary.model_dump() == run
        assert any(c["status"] == "expired" for cs in connections.values() for c in cs)
        assert len(runs) > 10

    async def test_changed_rows_are_the_clean_deliveries_of_the_range(
        self, location: Location
    ) -> None:
        deliveries = stream()
        async with serving(location) as storage:
            await append_folding(storage, deliveries)
            for environment in ENVIRONMENTS:
                found = await storage.reads.changed_rows(environment, None, 100, 400, 1000)
                assert [(r.seq, r.kind, r.linked_account_id, r.instance_id) for r in found] == [
                    (seq, d.kind, d.linked_account_id, d.instance_id)
                    for seq, d in enumerate(deliveries, 1)
                    if 100 < seq <= 400
                    and d.environment == environment
                    and not d.flags
                    and d.kind is not None
                ]
            mine = await storage.reads.changed_rows("live", "12345", 0, 10_000, 1000)
            assert mine
            assert {r.linked_account_id for r in mine} == {"12345"}
            assert len(await storage.reads.changed_rows("live", None, 0, 10_000, 3)) == 3

    # --- checkpoint --------------------------------------------------------------------------

    async def test_after_folding_every_projection_stands_at_the_head_and_the_token_moved(
        self, location: Location
    ) -> None:
        deliveries = stream()[:50]
        async with serving(location) as storage:
            before = await storage.projector.state_token()
            for delivery in deliveries:
                await storage.log.append(delivery)
            await fold_all(storage.projector)
            assert await storage.projector.state_token() != before
            reads = storage.reads
            assert await reads.positions() == (50, 50)
            assert await reads.folded_position() == 50
            states = await reads.projection_states()
            now = datetime.fromisoformat(RECEIVED_AT) + timedelta(hours=1)
            status = await reads.storage_status(now)
            assert await fold_all(storage.projector) == 0
        async with maintaining(location) as maintenance:
            head = await maintenance.head()
            statuses = await maintenance.statuses()
        assert (states.log_head, states.log_head_hash) == head
        assert [(p.name, p.position, p.errors) for p in states.projections] == [
            ("connection_health", 50, 0),
            ("workflow_runs", 50, 0),
        ]
        assert status.log_head == 50
        assert [(p.name, p.position, p.errors, p.lag_seconds) for p in status.projections] == [
            ("connection_health", 50, 0, 0.0),
            ("workflow_runs", 50, 0, 0.0),
        ]
        assert [(s.name, s.position, s.errors) for s in statuses] == [
            ("connection_health", 50, 0),
            ("workflow_runs", 50, 0),
        ]

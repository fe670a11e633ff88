"""Storage contract support: databases through the port, every Reads answer, the pure fold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import pytest

from projector.readmodels import CONNECTION_HEALTH, WORKFLOW_RUNS, ReadModel
from projector.storage.engine import open_maintenance, storage_for
from projector.storage.location import Location
from projector.storage.port import Maintenance, Projector, Reads, Storage
from projector.storage.rows import Appended, NewDelivery
from tests.storage_support import ODD_BODY, new_delivery, sample_deliveries

ENVIRONMENTS = ("live", "test")
Page = tuple[list[Any], str | None]


def stream() -> list[NewDelivery]:
    """The sample stream and one undecodable body: duplicates, flags and unknown events."""
    return [*sample_deliveries(), new_delivery(ODD_BODY, "live")]


class NewLocation(Protocol):
    def __call__(self) -> Location: ...


class ContractBase:
    """How a contract test gets databases: each engine's test class says how to make one."""

    def fresh_location(self, stack: ExitStack, tmp_path: Path) -> Location:
        """A new, empty database of this engine, removed when `stack` closes."""
        raise NotImplementedError

    async def alter_body(self, location: Location, seq: int) -> None:
        """Append a byte to the body at `seq` as someone with the database's keys would."""
        raise NotImplementedError

    @pytest.fixture
    def new_location(self, tmp_path: Path) -> Iterator[NewLocation]:
        with ExitStack() as stack:
            yield lambda: self.fresh_location(stack, tmp_path)

    @pytest.fixture
    def location(self, new_location: NewLocation) -> Location:
        return new_location()


@asynccontextmanager
async def serving(
    location: Location, batches: list[int] | None = None, max_pending: int = 10_000
) -> AsyncIterator[Storage]:
    """The storage `projector serve` opens on `location`; each commit's size goes to `batches`."""
    storage = storage_for(
        location,
        max_pending=max_pending,
        on_read_models_changed=lambda: None,
        on_batch=(lambda size: None) if batches is None else batches.append,
    )
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


@asynccontextmanager
async def maintaining(location: Location, *, create: bool = False) -> AsyncIterator[Maintenance]:
    """The log as a CLI command opens it (verify, rebuild, copy), closed at the end."""
    maintenance = await open_maintenance(location, readonly=False, create=create)
    try:
        yield maintenance
    finally:
        await maintenance.close()


async def fold_all(projector: Projector) -> int:
    """Fold until nothing is new; how many deliveries that folded."""
    total = 0
    for _ in range(10_000):  # a bound: a projector that never runs dry fails here
        folded = await projector.fold_new(100)
        if not folded:
            return total
        total += folded
    raise AssertionError("fold_new kept finding new deliveries")


async def append_folding(storage: Storage, deliveries: Sequence[NewDelivery]) -> list[Appended]:
    """Append in chunks of concurrent requests (commits shared), folding after each chunk."""
    appended: list[Appended] = []
    for start in range(0, len(deliveries), 64):
        chunk = deliveries[start : start + 64]
        # Tasks queue their appends in creation order: the seqs follow `deliveries`.
        appended += await asyncio.gather(*(storage.log.append(d) for d in chunk))
        await fold_all(storage.projector)
    return appended


async def walk(page_of: Callable[[str | None], Awaitable[Page]]) -> list[Any]:
    """Every item of a paged answer, following next_cursor until it ends."""
    items: list[Any] = []
    cursor = None
    for _ in range(10_000):
        page, cursor = await page_of(cursor)
        items += page
        if cursor is None:
            return items
    raise AssertionError("the pages did not end")


def accounts_of(deliveries: Sequence[NewDelivery]) -> list[tuple[str, str]]:
    """Every (environment, account) the deliveries name."""
    return sorted({(d.environment, d.linked_account_id) for d in deliveries if d.linked_account_id})


def runs_of(deliveries: Sequence[NewDelivery]) -> list[tuple[str, str]]:
    """Every (environment, instance) the deliveries name."""
    return sorted({(d.environment, d.instance_id) for d in deliveries if d.instance_id})


async def connection_list(
    reads: Reads, environment: str, status: str | None = None, limit: int = 7
) -> list[Any]:
    async def page(cursor: str | None) -> Page:
        answer = await reads.list_connections(environment, status, None, limit, cursor)
        return [c.model_dump() for c in answer.connections], answer.next_cursor

    return await walk(page)


async def run_list(reads: Reads, environment: str, account: str, limit: int = 3) -> list[Any]:
    async def page(cursor: str | None) -> Page:
        answer = await reads.account_runs(environment, account, None, None, limit, cursor)
        return [r.model_dump() for r in answer.runs], answer.next_cursor

    return await walk(page)


async def audit_seqs(reads: Reads, environment: str, **filters: Any) -> list[int]:
    """The seqs audit_events lists across pages of 37, with the given filters."""
    account, event = filters.pop("account", None), filters.pop("event", None)

    async def page(cursor: str | None) -> Page:
        answer = await reads.audit_events(environment, account, event, 0, 37, cursor, **filters)
        return [e.seq for e in answer.events], answer.next_cursor

    return await walk(page)


async def run_deliveries(reads: Reads, environment: str, instance: str) -> list[Any] | None:
    """Every delivery workflow_run lists for a run, pages of 2; None for an unknown run."""
    first = await reads.workflow_run(environment, instance, 2, None)
    if first is None:
        return None

    async def page(cursor: str | None) -> Page:
        answer = (
            first if cursor is None else await reads.workflow_run(environment, instance, 2, cursor)
        )
        assert answer is not None
        return [d.model_dump() for d in answer.deliveries], answer.next_cursor

    return await walk(page)


async def read_model_answers(reads: Reads, deliveries: Sequence[NewDelivery]) -> dict[str, Any]:
    """Every answer the read models give on the accounts and runs `deliveries` name."""
    found: dict[str, Any] = {}
    for environment, account in accounts_of(deliveries):
        banner = await reads.account_connections(environment, account)
        found[f"connections {environment}/{account}"] = banner.model_dump()
        found[f"runs {environment}/{account}"] = await run_list(reads, environment, account)
    for environment, instance in runs_of(deliveries):
        summary = await reads.run_summary(environment, instance)
        found[f"run {environment}/{instance}"] = summary and summary.model_dump()
    for environment in ENVIRONMENTS:
        for status in (None, "connected", "expired", "deleted"):
            found[f"list {environment} {status}"] = await connection_list(
                reads, environment, status
            )
    return found


async def every_answer(reads: Reads, deliveries: Sequence[NewDelivery]) -> dict[str, Any]:
    """The read models' answers and those that read the log too (audit, run deliveries)."""
    found = await read_model_answers(reads, deliveries)
    for environment, instance in runs_of(deliveries):
        found[f"run deliveries {environment}/{instance}"] = await run_deliveries(
            reads, environment, instance
        )
    for environment in ENVIRONMENTS:
        found[f"audit {environment}"] = await reads.audit_events(
            environment, None, None, 0, 10_000, None
        )
    for seq in range(1, len(deliveries) + 1):
        detail = await reads.audit_event(deliveries[seq - 1].environment, seq)
        found[f"detail {seq}"] = detail and detail.model_dump()
    for name in ("connection_health", "workflow_runs"):
        found[f"fold errors {name}"] = (await reads.fold_errors(name, 100, None)).model_dump()
    return found


def pure_fold(model: ReadModel[Any, Any], deliveries: Sequence[NewDelivery]) -> list[Any]:
    """The rows of `model` folded in memory from the deliveries' changes, sorted by key."""
    states: dict[Any, Any] = {}
    changes = [
        (seq, d.change)
        for seq, d in enumerate(deliveries, 1)
        if isinstance(d.change, model.change_type)
    ]
    _, errors = model.fold_into(states, changes)
    assert errors == []
    return sorted(model.to_row(state) for state in states.values())


def expected_connections(deliveries: Sequence[NewDelivery]) -> dict[tuple[str, str], list[Any]]:
    """Each account's connections as account_connections should answer, from the pure fold."""
    by_account: dict[tuple[str, str], list[Any]] = {}
    for environment, account, slug, status, since, type_, first, last in pure_fold(
        CONNECTION_HEALTH, deliveries
    ):
        by_account.setdefault((environment, account), []).append(
            {
                "slug": slug,
                "status": status,
                "status_since": since,
                "type": type_,
                "needs_reconnect": status == "expired",
                "first_seen": first,
                "last_event_at": last,
            }
        )
    return by_account


def expected_runs(deliveries: Sequence[NewDelivery]) -> dict[tuple[str, str], dict[str, Any]]:
    """Each run as run_summary should answer, from the pure fold."""
    return {
        (environment, instance): {
            "instance_id": instance,
            "workflow_id": workflow,
            "workflow_name": name,
            "config_id": config,
            "linked_account_id": account,
            "environment": environment,
            "status": status.lower(),
        }
        for environment, instance, account, status, workflow, name, config in pure_fold(
            WORKFLOW_RUNS, deliveries
        )
    }

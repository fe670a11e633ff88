"""The log's rows, as both adapters store and read them: one format, one hash chain.

A verified delivery (`NewDelivery`) becomes the stored columns of `row_content`, numbered
and hashed by `number_batch`; the projectors read rows back as `LoggedDelivery`, and
`projector verify` and `projector copy` see them whole as `StoredRow`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from projector.events import ConnectionChange, ParsedDelivery, WorkflowOutcome, parse_delivery
from projector.integrity import HASHED_COLUMNS, Value, missing_row, row_hash
from projector.storage.compact import (
    compact_headers,
    compact_headers_of,
    compact_hex,
    compact_instant,
    headers_of,
    hex_of,
    instant_of,
)

Change = ConnectionChange | WorkflowOutcome


@dataclass(frozen=True)
class NewDelivery:
    """A verified delivery, parsed, ready to append."""

    received_at: str
    environment: str
    key_id: str
    signed_as: str
    headers: dict[str, str]
    body: bytes
    event: str | None
    kind: str | None
    linked_account_id: str | None
    slug: str | None
    instance_id: str | None
    event_key: str
    flags: tuple[str, ...]
    # Not stored: what the projectors will fold, handed on so the live projector need not
    # parse the body again (a rebuild parses it, with the same function).
    change: Change | None = None

    @classmethod
    def verified(
        cls,
        body: bytes,
        parsed: ParsedDelivery,
        *,
        environment: str,
        received_at: str,
        key_id: str,
        signed_as: str,
        headers: dict[str, str],
    ) -> NewDelivery:
        """The row for a verified body, with the fields `parse_delivery` read from it."""
        return cls(
            received_at,
            environment,
            key_id,
            signed_as,
            headers,
            body,
            parsed.event,
            parsed.kind,
            parsed.linked_account_id,
            parsed.slug,
            parsed.instance_id,
            parsed.event_key,
            parsed.flags,
            parsed.change,
        )


def probe_delivery() -> NewDelivery:
    """The row a readiness probe appends, then rolls back: proves the write path works."""
    return NewDelivery.verified(
        b"{}",
        parse_delivery(b"{}", "test"),
        environment="test",
        received_at="1970-01-01T00:00:00Z",
        key_id="readiness-probe",
        signed_as="raw",
        headers={},
    )


# Built once (json.dumps with keywords builds an encoder per call); used for every row.
_SORTED_JSON = json.JSONEncoder(sort_keys=True)


def row_content(seq: int, delivery: NewDelivery, duplicate_of: int | None) -> tuple[Value, ...]:
    """The stored columns of `delivery` at `seq`, in `integrity.HASHED_COLUMNS` order.

    Both adapters store exactly these values and hash them with `integrity.row_hash`, so a
    log keeps its hash chain, byte for byte, on either engine.
    """
    return (
        seq,
        delivery.received_at,
        delivery.environment,
        delivery.key_id,
        delivery.signed_as,
        _SORTED_JSON.encode(delivery.headers),
        delivery.body,
        delivery.event,
        delivery.kind,
        delivery.linked_account_id,
        delivery.slug,
        delivery.instance_id,
        delivery.event_key,
        "[]" if not delivery.flags else json.dumps(list(delivery.flags)),
        duplicate_of,
    )


@dataclass(frozen=True)
class Appended:
    """Where a delivery landed, and the earlier delivery it repeats, if any."""

    seq: int
    duplicate_of: int | None


@dataclass(frozen=True)
class LoggedDelivery:
    """One row of the log, as the projectors and the audit queries read it."""

    seq: int
    received_at: str
    environment: str
    event: str | None
    linked_account_id: str | None
    flags: tuple[str, ...]
    duplicate_of: int | None
    body: bytes


@dataclass(frozen=True)
class StoredRow:
    """One row exactly as stored: `integrity.HASHED_COLUMNS` in order, and its hash.

    What `projector verify` walks and `projector copy` carries from one database to another.
    """

    content: tuple[Value, ...]
    row_hash: str

    @property
    def seq(self) -> int:
        return int(self.content[0])  # type: ignore[arg-type]


# Where the columns with a compact stored form sit in a row (`integrity.HASHED_COLUMNS`).
_RECEIVED_AT = HASHED_COLUMNS.index("received_at")
_HEADERS = HASHED_COLUMNS.index("headers")
_EVENT_KEY = HASHED_COLUMNS.index("event_key")


def stored_form(
    content: Sequence[Value],
    hashed: str,
    headers: bytes | str | None = None,
    *,
    instants: bool = True,
) -> tuple[Value, ...]:
    """A row's logical columns and hash in their compact stored forms (see `compact`).

    `headers`: their compact form if the caller has it (the writer has the dict).
    `instants`: received_at too (PostgreSQL keeps it as text, in a typed column).
    """
    row = list(content)
    if instants:
        row[_RECEIVED_AT] = compact_instant(str(row[_RECEIVED_AT]))
    row[_HEADERS] = compact_headers(str(row[_HEADERS])) if headers is None else headers
    row[_EVENT_KEY] = compact_hex(str(row[_EVENT_KEY]))
    return (*row, compact_hex(hashed))


def logical_form(stored: Sequence[Any]) -> StoredRow:
    """A row as stored (HASHED_COLUMNS, then row_hash), in either engine, as its logical row."""
    row: list[Value] = [bytes(v) if isinstance(v, memoryview) else v for v in stored[:-1]]
    row[_RECEIVED_AT] = instant_of(row[_RECEIVED_AT])  # type: ignore[arg-type]
    row[_HEADERS] = headers_of(row[_HEADERS])  # type: ignore[arg-type]
    row[_EVENT_KEY] = hex_of(row[_EVENT_KEY])  # type: ignore[arg-type]
    return StoredRow(tuple(row), hex_of(stored[-1]))


def number_batch(
    head: int,
    head_hash: str,
    batch: Sequence[NewDelivery],
    first_seen: dict[str, int],
    *,
    instants: bool = True,
) -> tuple[list[tuple[Value, ...]], list[Appended], str]:
    """The stored rows (`stored_form`) of `batch` appended after (`head`, `head_hash`).

    `first_seen` holds the first seq already logged for each of the batch's event keys; a
    delivery whose key is there (or earlier in the batch) is a duplicate of that seq. Also
    returns the last row's hash (hex): the new head's. `instants` as in `stored_form`.
    """
    seq, previous = head, head_hash
    rows: list[tuple[Value, ...]] = []
    results: list[Appended] = []
    for delivery in batch:
        seq += 1
        first = first_seen.setdefault(delivery.event_key, seq)
        duplicate_of = None if first == seq else first  # the first of its event: None
        content = row_content(seq, delivery, duplicate_of)
        # The chain hashes the logical content; only the stored form is compact.
        previous = row_hash(previous, content)
        headers = compact_headers_of(delivery.headers)
        rows.append(stored_form(content, previous, headers, instants=instants))
        results.append(Appended(seq, duplicate_of))
    return rows, results, previous


# What the projectors read of each row, in this order (`logged_deliveries`).
LOGGED_COLUMNS = (
    "seq, received_at, environment, event, linked_account_id, flags, duplicate_of, body"
)


def logged_deliveries(rows: Sequence[Sequence[Any]], after: int) -> list[LoggedDelivery]:
    """Rows of LOGGED_COLUMNS read after seq `after`, checked gap-free, as deliveries.

    Raises LogNotIntact at a missing seq: `projector verify` proves rows 1..head only up to
    a gap, so the projectors never fold a row past one.
    """
    if rows and rows[-1][0] != after + len(rows):  # seqs ascend, so only a gap breaks this
        expected = next(seq for seq, (row_seq, *_) in enumerate(rows, after + 1) if row_seq != seq)
        raise missing_row(expected, rows[expected - after - 1][0])
    return [logged_delivery(row) for row in rows]


def logged_delivery(row: Sequence[Any]) -> LoggedDelivery:
    """One row of LOGGED_COLUMNS as a delivery."""
    seq, received_at, environment, event, account, flags, duplicate_of, body = row
    return LoggedDelivery(
        seq,
        instant_of(received_at),
        environment,
        event,
        account,
        () if flags == "[]" else tuple(json.loads(flags)),  # most rows: spare the parse
        duplicate_of,
        bytes(body),
    )


class RowsDoNotContinue(Exception):
    """Copied rows do not continue the destination's log: wrong seq, or a broken chain."""


def check_continues(head: int, head_hash: str, row: StoredRow) -> None:
    """Raise RowsDoNotContinue unless `row` is the next row after (`head`, `head_hash`)."""
    if row.seq != head + 1:
        raise RowsDoNotContinue(
            f"the copied row with seq {row.seq} does not continue this log, whose next seq is "
            f"{head + 1}: copy into an empty database, or resume from seq {head + 1}"
        )
    if row_hash(head_hash, row.content) != row.row_hash:
        raise RowsDoNotContinue(
            f"the copied row with seq {row.seq} does not chain to this log's head hash "
            f"{head_hash}: the two logs differ before it (run `projector verify` on both)"
        )

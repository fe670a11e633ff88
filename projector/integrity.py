"""The log's hash chain: each row's SHA-256 covers its content and the previous row's hash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

# Every stored column but the hash itself, in a fixed order: changing any byte of any of
# them, or dropping, inserting or reordering rows, breaks the chain from that row on.
HASHED_COLUMNS = (
    "seq",
    "received_at",
    "environment",
    "key_id",
    "signed_as",
    "headers",
    "body",
    "event",
    "kind",
    "linked_account_id",
    "slug",
    "instance_id",
    "event_key",
    "flags",
    "duplicate_of",
)
GENESIS_HASH = "0" * 64

Value = int | str | bytes | None


def _field(value: Value) -> bytes:
    """One value, tagged by type and length-prefixed, so no two rows encode alike."""
    if value is None:
        return b"n"
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        return b"t" + len(raw).to_bytes(8, "big") + raw
    if isinstance(value, bytes):
        return b"b" + len(value).to_bytes(8, "big") + value
    raw = str(value).encode()
    return b"i" + len(raw).to_bytes(8, "big") + raw


def row_hash(previous: str, row: Sequence[Value]) -> str:
    """The hash of a row whose columns are `HASHED_COLUMNS`, chained to `previous`."""
    # One update of the joined fields: the writer thread hashes every row it appends.
    joined = b"".join([bytes.fromhex(previous), *map(_field, row)])
    return hashlib.sha256(joined).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    """What a walk of the log found: how far it is intact, and the first break if any."""

    rows: int
    head_seq: int
    head_hash: str
    broken_at: int | None = None
    problem: str | None = None

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def walk(rows: Iterable[tuple[int, Sequence[Value], str]]) -> ChainReport:
    """Check (seq, hashed columns, stored hash) rows in seq order from seq 1; first break wins."""
    expected_seq, previous, count = 1, GENESIS_HASH, 0
    for seq, content, stored in rows:
        if seq != expected_seq:
            problem = f"seq {expected_seq} is missing: the next row has seq {seq}"
            return ChainReport(count, expected_seq - 1, previous, expected_seq, problem)
        computed = row_hash(previous, content)
        if stored != computed:
            problem = (
                f"the stored hash {stored} is not the hash of this row's content chained to "
                f"the previous row's ({computed}): the row or an earlier one was altered"
            )
            return ChainReport(count, expected_seq - 1, previous, expected_seq, problem)
        previous, expected_seq, count = computed, expected_seq + 1, count + 1
    return ChainReport(count, expected_seq - 1, previous)


def holds_only_the_chain(
    walked: ChainReport, count: int, lowest: int | None, highest: int | None
) -> bool:
    """Whether a table of `count` rows, seq `lowest`..`highest`, holds the walked chain alone."""
    expected = (walked.rows, 1, walked.head_seq) if walked.rows else (0, None, None)
    return (count, lowest, highest) == expected


def row_outside_the_chain(walked: ChainReport, count: int, seq: int) -> ChainReport:
    """`walked`, broken at a row (`seq`) that the walk of seq 1.. never reached."""
    problem = (
        f"a row with seq {seq} lies outside the chain's seq 1..{walked.head_seq}: the log "
        f"holds {count} rows, the chain {walked.rows}; rows are numbered from 1 and only ever "
        "appended at the head, so this one was put in by other means"
    )
    return replace(walked, broken_at=seq, problem=problem)


class LogNotIntact(Exception):
    """Rows of seq 1..head are missing: nothing past the gap is folded until it is resolved."""


def missing_row(expected: int, found: int | None) -> LogNotIntact:
    """The error for a log without seq `expected` (its next row being `found`, if known)."""
    after = "" if found is None else f" (the next row has seq {found})"
    return LogNotIntact(
        f"the event log has no row with seq {expected}{after}; an intact log numbers its rows "
        "1, 2, 3... without gaps, so rows were removed or put in by other means. Nothing past "
        "the gap is folded: run `projector verify`, and restore the log from a backup"
    )

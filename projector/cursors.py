"""Opaque page cursors: the sort key of the last item an answer returned."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any


class InvalidCursor(ValueError):
    """A cursor this API did not issue, or one for another list."""


def encode_cursor(*values: str | int) -> str:
    """An opaque cursor holding the sort key of the last item returned."""
    return (
        base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode())
        .decode()
        .rstrip("=")
    )


def decode_cursor(cursor: str, *types: type) -> tuple[Any, ...]:
    """The sort key inside `cursor`, checked against the types this list expects."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidCursor(cursor) from None
    if (
        not isinstance(values, list)
        or len(values) != len(types)
        or not all(type(v) is t for v, t in zip(values, types, strict=True))
        or not all(0 <= v < 2**63 for v in values if isinstance(v, int))  # SQLite's INTEGER
    ):
        raise InvalidCursor(cursor)
    return tuple(values)

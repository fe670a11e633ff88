"""Page cursors: opaque, and refused unless this API issued them for this list."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from projector.cursors import InvalidCursor, decode_cursor, encode_cursor


@pytest.mark.parametrize(
    ("values", "types"),
    [
        (("acct_1", "hubspot"), (str, str)),
        (("ops@northwind-traders.example", "zendesk"), (str, str)),
        (("caf\u00e9 \u2603", ""), (str, str)),
        ((0,), (int,)),
        ((123456789012,), (int,)),
        (("67d22c4330d75f3a3fa29056",), (str,)),
    ],
)
def test_a_cursor_decodes_to_the_values_it_was_encoded_from(
    values: tuple[Any, ...], types: tuple[type, ...]
) -> None:
    """encode_cursor then decode_cursor with the same types gives the values back."""
    cursor = encode_cursor(*values)
    assert "=" not in cursor
    assert decode_cursor(cursor, *types) == values


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("cursor", "types"),
    [
        ("", (int,)),
        ("!!!!", (int,)),
        ("not a cursor at all", (int,)),
        ("caf\u00e9", (int,)),
        ("a", (int,)),
        (b64(b"hello"), (int,)),
        (b64(b"\xff\xfe\x80"), (int,)),
        (b64(b'{"seq": 5}'), (int,)),
        (b64(b"5"), (int,)),
        (b64(b"[]"), (int,)),
        (b64(b"[1, 2]"), (int,)),
        (b64(b'["a"]'), (str, str)),
        (b64(b'["5"]'), (int,)),
        (b64(b"[true]"), (int,)),
        (b64(b"[1.0]"), (int,)),
        (b64(b"[null]"), (int,)),
        (b64(b"[NaN]"), (int,)),
        (b64(b"[5]"), (str,)),
        (b64(b'["a", 1]'), (str, str)),
        (b64(b'[["a"], "b"]'), (str, str)),
    ],
)
def test_decode_cursor_rejects_what_this_api_did_not_issue(
    cursor: str, types: tuple[type, ...]
) -> None:
    """Garbage, non-JSON, and JSON of the wrong shape, length or types raise InvalidCursor."""
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor, *types)


def test_decode_cursor_rejects_deeply_nested_json_with_invalid_cursor() -> None:
    """A cursor of ~1,300 characters nesting JSON arrays is garbage too, not a crash."""
    cursor = b64(b"[" * 1000)
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor, int)

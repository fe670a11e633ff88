"""projector.http: what the receiver and the API share on the wire."""

from __future__ import annotations

import pytest

from projector.http import header_text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("refold/1.0", "refold/1.0"),
        ("caf\u00e9", "caf\u00e9"),
        ("\udcff\udcfe", "\\xff\\xfe"),  # bytes 0xff 0xfe as aiohttp hands them over
        ("\ud800", "\\xed\\xa0\\x80"),  # a surrogate aiohttp never makes: its UTF-8 bytes
    ],
    ids=["ascii", "utf8", "undecodable_bytes", "other_surrogate"],
)
def test_header_text_is_always_encodable_utf8(value: str, text: str) -> None:
    """Header values the log keeps can always be stored and sent back in a JSON answer."""
    assert header_text(value) == text
    text.encode("utf-8")

"""The flags a stored delivery can carry, and checking a flag name a user asks to filter by."""

from __future__ import annotations

import re

# Every flag parse_delivery gives: one of these, or a field flag such as missing_field:slug.
WHOLE_FLAGS = (
    "not_json",
    "not_an_object",
    "duplicate_keys",
    "unknown_event",
    "environment_mismatch",
)
FIELD_FLAG_KINDS = ("missing_field", "invalid_field")
# A payload field's name as the flag writes it: pydantic's location, joined with dots.
_FIELD = re.compile(r"[A-Za-z0-9_.]{1,100}")
_CHOICES = f"{', '.join(WHOLE_FLAGS)}, or missing_field:FIELD / invalid_field:FIELD"
# The same words for GET /v1/events?flagged= and `projector events --flagged/--no-flagged`.
FLAGGED_CHOICES = "true lists flagged deliveries only, false clean ones; leave it out for both"


def flag_problem(name: str) -> str | None:
    """Why `name` is not a flag a delivery can carry (what to send instead), or None."""
    if name in WHOLE_FLAGS:
        return None
    kind, colon, field = name.partition(":")
    if kind in FIELD_FLAG_KINDS:
        if colon and _FIELD.fullmatch(field):
            return None
        return f"flag {name[:120]!r} must name the field, as in {kind}:slug"
    return f"flag {name[:60]!r} is not a flag deliveries carry; use one of {_CHOICES}"

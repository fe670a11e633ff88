"""A delivery body's bytes read as a JSON object, strictly, with the flag for what is wrong."""

from __future__ import annotations

import json
import re
from typing import Any

# Refold payloads nest a few levels. A body nested deeper is not JSON to us even where
# Python's parser takes it (up to ~1000 levels): pydantic cannot serialise such a payload
# (past ~255), so one delivery would break every audit answer that includes it.
MAX_DEPTH = 100


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Built once: json.dumps with keywords builds a new encoder per call (identities use it).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# \u0000 in canonical JSON: preceded by an even number of backslashes (none, or escaped ones).
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def canonical(value: Any) -> str:
    """JSON with sorted keys and no spaces: one text for one value (identities hash it)."""
    return _CANONICAL.encode(value)


class _RepeatedKeys(dict[str, Any]):
    """A JSON object whose text repeated a key (Python kept the last value)."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    built = dict(pairs)
    # Linear: a hostile 100,000-key object stays cheap.
    return built if len(built) == len(pairs) else _RepeatedKeys(built)


# One decoder for every body, holding no state between calls (json.loads with keywords
# would build a new one per call): objects that repeat a key come back marked by type.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_object)


def _repeats_a_key(value: Any) -> bool:
    """Whether any object in `value` (walked, not recursed) repeated a key in its text."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _RepeatedKeys):
            return True
        if isinstance(item, dict | list):
            stack.extend(item.values() if isinstance(item, dict) else item)
    return False


def _nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects in `value` nest more than `limit` deep (walked, not recursed)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def load_json_object(body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The body as a JSON object (or None), and the flag that says what is wrong with it."""
    try:
        # What json.loads does with bytes, on the shared decoder.
        parsed = _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
        # A lone surrogate (\ud800) is JSON syntax but not Unicode text: it could be neither
        # hashed, stored as text nor sent back in an answer, so such a body is not JSON to us.
        # Only a \u escape or raw surrogate bytes (0xED 0xA0.., which json.loads decodes with
        # surrogatepass) can make one; a NUL byte means UTF-16 or UTF-32, whose bytes for
        # either differ. Other bodies, nearly all, skip the check.
        if b"\\u" in body or b"\xed" in body or b"\x00" in body:
            text = canonical(parsed)
            text.encode()
            # U+0000 is JSON and Unicode, but no text column (PostgreSQL's) can hold it, and
            # no Refold payload has one: such a body is kept, flagged, and not folded.
            if _ESCAPED_NUL.search(text):
                raise ValueError("U+0000 in a string")
    except (ValueError, RecursionError):  # UnicodeError is a ValueError; so is a 5000-digit int
        return None, "not_json"
    # Nesting can be no deeper than the number of brackets: counting them (in C) spares the
    # walk for every ordinary payload.
    openers = body.count(b"[") + body.count(b"{")
    if openers > MAX_DEPTH and _nests_deeper_than(parsed, MAX_DEPTH):  # see MAX_DEPTH
        return None, "not_json"
    if not isinstance(parsed, dict):
        return None, "not_an_object"
    # One object needs no walk; only a body with another `{` can hide one deeper down.
    if type(parsed) is _RepeatedKeys or (openers > 1 and _repeats_a_key(parsed)):
        # Parsers disagree on which value of a repeated key counts (first, last, or an
        # error), so what Python reads (the last) is kept for the audit trail but not trusted
        # as the event. Parsed again for plain dicts: the marker type stays in here.
        return json.loads(body), "duplicate_keys"
    return parsed, None

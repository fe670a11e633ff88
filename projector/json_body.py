"""A delivery body's bytes read as a JSON object, strictly, with the flag for what is wrong."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

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


# The fast path's guards read one translation of the body, with every digit made `0`, `,` and
# `[` made `!`, 0xED and `\\` made NUL, and whitespace and `-` deleted (which only joins bytes).
_SHAPE = bytes.maketrans(b"0123456789,[\xed\\", b"0000000000!!\x00\x00")
_NOT_IN_SHAPE = b" \t\n\r-"
# An integer of 19 digits or more may be past 64 bits, where orjson gives a float. Such a token
# starts after `:`, `,` or `[`, whitespace and a sign; the same bytes in a string only cost a
# fallback to the strict read.
_LONG_INTEGERS = (b":" + b"0" * 19, b"!" + b"0" * 19)


def _keys_in(value: dict[str, Any]) -> int:
    """How many keys the objects in `value` hold, all depths counted (walked, not recursed)."""
    count, stack = 0, [value]  # type: int, list[Any]
    while stack:
        item = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        count += len(item) if isinstance(item, dict) else 0
        stack.extend(child for child in children if isinstance(child, dict | list))
    return count


def fast_json_object(body: bytes) -> dict[str, Any] | None:
    """The body read by orjson when that is provably what the strict read gives, else None.

    None means "ask the strict read", which stays the authority for every flag.
    """
    # Excluded by their bytes, each a case where orjson can accept what the strict read does
    # not, or read it differently: escapes (\u0000, surrogates; one search finds every `\\`,
    # and payloads seldom hold one), NUL (UTF-16/32 bodies), 0xED (surrogates in UTF-8), a
    # BOM, deep nesting, and integers past 64 bits.
    shape = body.translate(_SHAPE, _NOT_IN_SHAPE)
    if b"\x00" in shape or body.startswith(b"\xef\xbb\xbf"):
        return None
    objects = body.count(b"{")
    if objects + body.count(b"[") > MAX_DEPTH:
        return None
    if _LONG_INTEGERS[0] in shape or _LONG_INTEGERS[1] in shape:
        return None
    try:
        parsed = orjson.loads(body)  # NaN, Infinity, bad UTF-8, control characters: raises
    except orjson.JSONDecodeError:
        return None
    if type(parsed) is not dict:
        return None
    # orjson keeps a repeated key's last value silently, so it holds fewer keys than the text
    # writes. Each key's `:` follows its closing `"` (whitespace deleted): so `":` in the shape
    # bounds the keys written from above, and keys held == that bound proves none repeated.
    # One `{` in the text means one object: no walk.
    held = len(parsed) if objects == 1 else _keys_in(parsed)
    return parsed if held == shape.count(b'":') else None


def load_json_object(body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The body as a JSON object (or None), and the flag that says what is wrong with it."""
    fast = fast_json_object(body)
    if fast is not None:
        return fast, None
    return strict_json_object(body)


def strict_json_object(body: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """`load_json_object` by Python's json module: the authority the fast path must match."""
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

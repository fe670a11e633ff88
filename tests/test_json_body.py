"""Reading a body's bytes as a JSON object: what is accepted, and the flag for what is not."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from projector import json_body
from projector.events import parse_change, parse_delivery
from projector.json_body import (
    MAX_DEPTH,
    canonical,
    fast_json_object,
    load_json_object,
    strict_json_object,
)
from tests.support import sample_bodies


def test_a_plain_object_is_read_with_no_flag() -> None:
    assert load_json_object(b'{"event":"Connection Created","n":1}') == (
        {"event": "Connection Created", "n": 1},
        None,
    )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{not json", id="syntax"),
        pytest.param(b'{"n": NaN}', id="nan"),
        pytest.param(b'{"n": Infinity}', id="infinity"),
        pytest.param(b'{"s": "\\ud800"}', id="lone-surrogate-escape"),
        pytest.param(b'{"s": "\xed\xa0\x80"}', id="raw-surrogate-bytes"),
        pytest.param(b'{"s": "\xff"}', id="not-utf8"),
        pytest.param(b"", id="empty"),
    ],
)
def test_a_body_that_is_not_json_to_us_is_flagged_not_json(body: bytes) -> None:
    assert load_json_object(body) == (None, "not_json")


@pytest.mark.parametrize("body", [b"[]", b"1", b'"text"', b"null"])
def test_json_that_is_not_an_object_is_flagged_not_an_object(body: bytes) -> None:
    assert load_json_object(body) == (None, "not_an_object")


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":1,"a":2}',
        b'{"outer":{"a":1,"a":2}}',
        b'{"list":[{"a":1},{"b":1,"b":1}]}',
    ],
)
def test_a_repeated_key_at_any_depth_is_flagged_and_read_as_plain_dicts(body: bytes) -> None:
    payload, flag = load_json_object(body)
    assert flag == "duplicate_keys"
    stack: list[object] = [payload]
    while stack:  # no marker type leaves the module: every object is a plain dict
        item = stack.pop()
        if isinstance(item, dict):
            assert type(item) is dict
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def test_the_same_key_in_sibling_objects_is_not_repeated() -> None:
    assert load_json_object(b'{"a":{"k":1},"b":{"k":1},"c":[{"k":1},{"k":2}]}')[1] is None


def test_nesting_up_to_max_depth_is_read_and_deeper_is_not_json() -> None:
    def nested(depth: int) -> bytes:
        return b'{"a":' * depth + b"1" + b"}" * depth

    assert load_json_object(nested(MAX_DEPTH))[1] is None
    assert load_json_object(nested(MAX_DEPTH + 1)) == (None, "not_json")


def test_utf8_with_a_byte_order_mark_reads_as_json_loads_reads_it() -> None:
    assert load_json_object(b'\xef\xbb\xbf{"a":1}') == ({"a": 1}, None)


def test_canonical_text_does_not_depend_on_key_order() -> None:
    assert canonical({"b": 1, "a": [1, "é"]}) == canonical({"a": [1, "é"], "b": 1})
    assert canonical({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'


# --- The orjson fast path: it answers only where it gives exactly what the strict read gives.


def exactly(value: Any) -> str:
    """A text that tells apart what == does not: 1, 1.0 and True; 0.0 and -0.0; dict types."""
    return f"{type(value).__name__}:{value!r}"


def assert_fast_matches_strict(body: bytes) -> bool:
    """Fast and strict agree on `body` (or the fast path declines); whether it answered."""
    fast = fast_json_object(body)
    strict_payload, strict_flag = strict_json_object(body)
    if fast is not None:
        assert strict_flag is None
        assert exactly(fast) == exactly(strict_payload)
    payload, flag = load_json_object(body)
    assert flag == strict_flag
    assert exactly(payload) == exactly(strict_payload)
    return fast is not None


# What a JSON text can hold: keys that may collide, strings with escapes, colons and
# non-ASCII, every kind of number JSON writes, and nesting.
TEXT = st.text(
    alphabet=st.sampled_from(["a", "b", ":", '"', "\\", "/", "\n", "\t", "é", "한", "😀", " "])
    | st.characters(codec="utf-8"),
    max_size=12,
)
KEYS = st.sampled_from(["a", "b", "event", "k:1", 'q"']) | TEXT
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)
OBJECTS = st.dictionaries(KEYS, VALUES, max_size=6)
NUMBER_TEXT = st.from_regex(r"\A-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,25})?([eE][-+]?[0-9]{1,4})?\Z")


def encoded(value: Any, ascii_only: bool, spaced: bool) -> bytes:
    separators = (", ", ": ") if spaced else (",", ":")
    return json.dumps(value, ensure_ascii=ascii_only, separators=separators).encode()


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(OBJECTS, st.booleans(), st.booleans())
def test_the_fast_path_reads_generated_objects_exactly_as_the_strict_read(
    value: dict[str, Any], ascii_only: bool, spaced: bool
) -> None:
    assert_fast_matches_strict(encoded(value, ascii_only, spaced))


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["a", "b", "c:d", "e"]), st.integers(0, 9), min_size=1))
def test_a_plain_object_without_escapes_or_long_numbers_takes_the_fast_path(
    value: dict[str, int],
) -> None:
    assert assert_fast_matches_strict(encoded(value, ascii_only=False, spaced=False))


@settings(max_examples=400)
@given(NUMBER_TEXT)
@example("-0")
@example("-0.0")
@example("1e400")
@example("18446744073709551616")
@example("-9223372036854775809")
@example("123456789012345678")
@example("2.2250738585072011e-308")
@example("0.1e-400")
def test_a_number_reads_the_same_on_both_paths(number: str) -> None:
    assert_fast_matches_strict(b'{"n":' + number.encode() + b',"m":[' + number.encode() + b"]}")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(OBJECTS, st.booleans(), KEYS, VALUES, VALUES)
def test_a_repeated_key_at_any_depth_sends_the_body_to_the_strict_read(
    value: dict[str, Any], in_list: bool, key: str, first: Any, last: Any
) -> None:
    """An object whose text repeats `key` (first, then last), nested in a list or an object."""
    inner = json.dumps({**value, key: last}, ensure_ascii=False)
    repeated = "{" + json.dumps(key, ensure_ascii=False) + ":" + json.dumps(first) + "," + inner[1:]
    if in_list:
        body, unrepeated = f'{{"y":[1,{repeated}]}}', f'{{"y":[1,{inner}]}}'
    else:
        body, unrepeated = f'{{"x":{repeated},"z":2}}', f'{{"x":{inner},"z":2}}'
    assert fast_json_object(body.encode()) is None
    assert_fast_matches_strict(body.encode())
    # Flagged as repeated unless the text is not JSON to us anyway (a U+0000 in a string).
    expected = strict_json_object(unrepeated.encode())[1] or "duplicate_keys"
    assert load_json_object(body.encode())[1] == expected


HOSTILE_PIECES = [
    b"\\u0000",
    b"\\ud800",
    b"\\u00e9",
    b"\x00",
    b"\xed\xa0\x80",
    b"\xed\x9f\xbf",
    b"\xff",
    b"\xef\xbb\xbf",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e999",
    b'"a":1,',
    b"\x01",
    b"\x0c",
    b"\\",
    b'"',
    b":",
    b",",
    b"{",
    b"}",
    b"[",
    b"]",
    b"9" * 20,
    b"\xc0\x80",
    b"\xf4\x90\x80\x80",
    b" ",
    b"\n",
]


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(
    OBJECTS,
    st.lists(
        st.tuples(
            st.integers(0, 10**6),
            st.sampled_from(HOSTILE_PIECES) | st.binary(max_size=3),
            st.integers(0, 2),
        ),
        max_size=4,
    ),
)
def test_mutated_and_hostile_bytes_read_the_same_on_both_paths(
    value: dict[str, Any], edits: list[tuple[int, bytes, int]]
) -> None:
    body = bytearray(encoded(value, ascii_only=False, spaced=False))
    for where, piece, dropped in edits:
        at = where % (len(body) + 1)
        body[at : at + dropped] = piece  # insert, or overwrite a few bytes
    assert_fast_matches_strict(bytes(body))


@settings(max_examples=200)
@given(st.integers(1, 2 * MAX_DEPTH), st.sampled_from([b'{"a":', b"["]))
def test_nesting_at_any_depth_reads_the_same_on_both_paths(depth: int, opener: bytes) -> None:
    closer = b"}" if opener == b'{"a":' else b"]"
    assert_fast_matches_strict(b'{"d":' + opener * depth + b"1" + closer * depth + b"}")


@pytest.mark.parametrize(
    ("body", "strict"),
    [
        pytest.param(b'{"a":1,"a":1}', ({"a": 1}, "duplicate_keys"), id="repeated-key"),
        pytest.param(b'{"o":{"a":1,"a":2}}', ({"o": {"a": 2}}, "duplicate_keys"), id="deep-repeat"),
        pytest.param(b'{"s":"\\u00e9"}', ({"s": "\u00e9"}, None), id="unicode-escape"),
        pytest.param(b'{"s":"\\u0000"}', (None, "not_json"), id="escaped-nul"),
        pytest.param(b'{"s":"\\ud800"}', (None, "not_json"), id="lone-surrogate"),
        pytest.param(b'{"s":"\xed\xa0\x80"}', (None, "not_json"), id="surrogate-bytes"),
        pytest.param(b'{"s":"\xed\x9f\xbf"}', ({"s": "\ud7ff"}, None), id="hangul-0xed"),
        pytest.param('{"a":1}'.encode("utf-16-le"), ({"a": 1}, None), id="utf-16"),
        pytest.param('{"a":1}'.encode("utf-32"), ({"a": 1}, None), id="utf-32"),
        pytest.param(b'\xef\xbb\xbf{"a":1}', ({"a": 1}, None), id="byte-order-mark"),
        pytest.param(b'{"n":18446744073709551616}', ({"n": 2**64}, None), id="past-64-bits"),
        pytest.param(b'{"n":-9223372036854775809}', ({"n": -(2**63) - 1}, None), id="below-i64"),
        pytest.param(b'{"n":' + b"9" * 5000 + b"}", (None, "not_json"), id="5000-digits"),
        pytest.param(b'{"n":1e400}', ({"n": float("inf")}, None), id="overflowing-float"),
        pytest.param(b'{"n":NaN}', (None, "not_json"), id="nan"),
        pytest.param(b'{"n":-Infinity}', (None, "not_json"), id="infinity"),
        pytest.param(b'{"a":' * 101 + b"1" + b"}" * 101, (None, "not_json"), id="too-deep"),
        pytest.param(b"[" * 60 + b"{}" + b"]" * 60, (None, "not_an_object"), id="many-brackets"),
        pytest.param(b"[1,2]", (None, "not_an_object"), id="not-an-object"),
    ],
)
def test_each_case_the_fast_path_cannot_prove_goes_to_the_strict_read(
    body: bytes, strict: tuple[dict[str, Any] | None, str | None]
) -> None:
    assert fast_json_object(body) is None
    payload, flag = load_json_object(body)
    assert (exactly(payload), flag) == (exactly(strict[0]), strict[1])


def test_sample_deliveries_take_the_fast_path_and_parse_the_same_without_it() -> None:
    bodies = sample_bodies()
    fast_answers = [
        (parse_delivery(b, "live"), parse_change(b, "live"), parse_change(b, "test"))
        for b in bodies
    ]
    with mock.patch.object(json_body, "fast_json_object", return_value=None):
        strict_answers = [
            (parse_delivery(b, "live"), parse_change(b, "live"), parse_change(b, "test"))
            for b in bodies
        ]
    assert fast_answers == strict_answers
    assert sum(fast_json_object(b) is not None for b in bodies) > len(bodies) * 0.9

"""Reading a body's bytes as a JSON object: what is accepted, and the flag for what is not."""

from __future__ import annotations

import pytest

from projector.json_body import MAX_DEPTH, canonical, load_json_object


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

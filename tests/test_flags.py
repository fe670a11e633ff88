"""Flag names: every flag a delivery can carry is one a filter accepts; others say what to send."""

from __future__ import annotations

import json

import pytest

from projector.events import parse_delivery
from projector.flags import FIELD_FLAG_KINDS, WHOLE_FLAGS, flag_problem
from tests.support import sample_bodies


def _body(**fields: object) -> bytes:
    payload = {
        "linked_account_id": "acct_f",
        "environment": "live",
        "event": "Connection Expired",
        "slug": "gmail",
        "createdAt": "Tue, 07 Nov 2023 08:38:33 GMT",
        **fields,
    }
    return json.dumps({k: v for k, v in payload.items() if v is not None}).encode()


# One body for each way a delivery gets flagged, besides the sample stream's own.
FLAGGING_BODIES = [
    b"{not json",
    b"[1, 2]",
    b'{"event": "Connection Expired", "event": "Connection Created"}',
    _body(event="Connection Refreshed"),
    _body(environment="test"),
    _body(slug=None),
    _body(event=None),
    _body(createdAt="yesterday"),
    _body(environment="test", slug=None),
    json.dumps({"event": "Workflow Errored", "linked_account_id": "a", "status": 5}).encode(),
]


def test_every_flag_parse_delivery_gives_is_a_flag_a_filter_accepts() -> None:
    """The flag filter must never refuse a flag that deliveries really carry."""
    given = {
        flag
        for body in [*sample_bodies(), *FLAGGING_BODIES]
        for flag in parse_delivery(body, "live").flags
    }
    assert set(WHOLE_FLAGS) <= given  # the bodies above do reach every whole flag
    assert {flag.partition(":")[0] for flag in given} == {*WHOLE_FLAGS, *FIELD_FLAG_KINDS}
    assert {flag: flag_problem(flag) for flag in given} == dict.fromkeys(given)


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("unknown_events", "use one of not_json, not_an_object"),
        ("slug", "missing_field:FIELD / invalid_field:FIELD"),
        ("", "is not a flag deliveries carry"),
        ("missing_field", "must name the field, as in missing_field:slug"),
        ("missing_field:", "must name the field, as in missing_field:slug"),
        ("invalid_field:created At", "must name the field, as in invalid_field:slug"),
        ("NOT_JSON", "is not a flag deliveries carry"),
    ],
)
def test_a_name_that_is_no_flag_is_refused_with_what_to_send(name: str, says: str) -> None:
    problem = flag_problem(name)
    assert problem is not None
    assert says in problem

"""projector.events: instants, payload models, flags and event identity."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from unittest import mock

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from projector.events import (
    CONNECTION_STATUS_BY_EVENT,
    WORKFLOW_STATUS_BY_EVENT,
    ConnectionChange,
    ConnectionEventPayload,
    WorkflowEventPayload,
    WorkflowOutcome,
    format_instant,
    parse_change,
    parse_delivery,
    parse_instant,
)
from projector.json_body import MAX_DEPTH
from tests.support import sample_bodies

CONNECTION_EXAMPLE = (
    b'{"linked_account_id":"12345","org_id":"645270e37917442c4307297a","environment":"test",'
    b'"type":"General","event":"Connection Expired","slug":"pipedrive",'
    b'"createdAt":"Tue, 07 Nov 2023 08:38:33 GMT"}'
)
WORKFLOW_EXAMPLE = (
    b'{"linked_account_id":"dev","instance_id":"67d22c4330d75f3a3fa29056",'
    b'"workflow_id":"67af37ad1d0bb61005439eaf","event":"Workflow Completed",'
    b'"workflow_name":"Get Response","status":"COMPLETED","environment":"test"}'
)
EXAMPLE_INSTANT = datetime(2023, 11, 7, 8, 38, 33, tzinfo=UTC)


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def connection(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "linked_account_id": "12345",
        "org_id": "org",
        "environment": "live",
        "type": "General",
        "event": "Connection Created",
        "slug": "pipedrive",
        "createdAt": "Tue, 07 Nov 2023 08:38:33 GMT",
    }
    fields.update(overrides)
    return fields


def workflow(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "linked_account_id": "dev",
        "instance_id": "run-1",
        "workflow_id": "wf-1",
        "event": "Workflow Errored",
        "workflow_name": "Get Response",
        "status": "ERRORED",
    }
    fields.update(overrides)
    return fields


# --- parse_instant / format_instant -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("Tue, 07 Nov 2023 08:38:33 GMT", EXAMPLE_INSTANT, id="rfc1123"),
        pytest.param("  Tue, 07 Nov 2023 08:38:33 GMT ", EXAMPLE_INSTANT, id="rfc1123-padded"),
        pytest.param("Tue, 07 Nov 2023 10:38:33 +0200", EXAMPLE_INSTANT, id="rfc2822-offset"),
        pytest.param("2023-11-07T08:38:33Z", EXAMPLE_INSTANT, id="iso-z"),
        pytest.param("2023-11-07T10:38:33+02:00", EXAMPLE_INSTANT, id="iso-offset"),
        pytest.param("2023-11-07T08:38:33", EXAMPLE_INSTANT, id="iso-naive-is-utc"),
        pytest.param(
            "2023-11-07T08:38:33.250Z",
            EXAMPLE_INSTANT + timedelta(milliseconds=250),
            id="iso-fraction",
        ),
    ],
)
def test_parse_instant_reads_rfc1123_and_iso8601_as_aware_utc(
    text: str, expected: datetime
) -> None:
    parsed = parse_instant(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["", "yesterday", "2023-13-07T08:38:33Z", "Tue, 07 Nov 2023"])
def test_parse_instant_raises_value_error_on_garbage(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError is the contract
        parse_instant(text)


def test_format_instant_is_iso_utc_with_z_and_whole_seconds() -> None:
    assert format_instant(EXAMPLE_INSTANT) == "2023-11-07T08:38:33Z"


def test_format_instant_converts_other_offsets_to_utc() -> None:
    moment = datetime(2023, 11, 7, 10, 38, 33, tzinfo=timezone(timedelta(hours=2)))
    assert format_instant(moment) == "2023-11-07T08:38:33Z"


def test_format_instant_keeps_microseconds_when_there_are_any() -> None:
    moment = EXAMPLE_INSTANT.replace(microsecond=250_000)
    assert format_instant(moment) == "2023-11-07T08:38:33.250000Z"


def test_format_instant_round_trips_through_parse_instant() -> None:
    for moment in (EXAMPLE_INSTANT, EXAMPLE_INSTANT.replace(microsecond=1)):
        assert parse_instant(format_instant(moment)) == moment


# --- documented examples ------------------------------------------------------------------


def test_documented_connection_example_parses_without_flags() -> None:
    parsed = parse_delivery(CONNECTION_EXAMPLE, "test")
    assert parsed.flags == ()
    assert parsed.kind == "connection"
    assert parsed.event == "Connection Expired"
    assert (parsed.linked_account_id, parsed.slug, parsed.instance_id) == (
        "12345",
        "pipedrive",
        None,
    )
    assert parsed.change == ConnectionChange(
        environment="test",
        linked_account_id="12345",
        slug="pipedrive",
        status="expired",
        occurred_at=EXAMPLE_INSTANT,
        type="General",
    )


def test_documented_workflow_example_parses_without_flags() -> None:
    parsed = parse_delivery(WORKFLOW_EXAMPLE, "test")
    assert parsed.flags == ()
    assert parsed.kind == "workflow"
    assert parsed.event == "Workflow Completed"
    assert (parsed.linked_account_id, parsed.slug, parsed.instance_id) == (
        "dev",
        None,
        "67d22c4330d75f3a3fa29056",
    )
    assert parsed.change == WorkflowOutcome(
        environment="test",
        instance_id="67d22c4330d75f3a3fa29056",
        linked_account_id="dev",
        status="COMPLETED",
        workflow_id="67af37ad1d0bb61005439eaf",
        workflow_name="Get Response",
        config_id=None,
    )


@pytest.mark.parametrize(
    ("event", "status"),
    [
        ("Connection Created", "connected"),
        ("Connection Expired", "expired"),
        ("Connection Deleted", "deleted"),
    ],
)
def test_each_connection_event_maps_to_its_status(event: str, status: str) -> None:
    change = parse_delivery(body(**connection(event=event)), "live").change
    assert isinstance(change, ConnectionChange)
    assert change.status == status


@pytest.mark.parametrize(
    ("event", "status"),
    [
        ("Workflow Completed", "COMPLETED"),
        ("Workflow Errored", "ERRORED"),
        ("Workflow Stopped", "STOPPED"),
        ("Workflow Timed Out", "TIMED_OUT"),
    ],
)
def test_a_workflow_event_without_status_takes_it_from_the_event_name(
    event: str, status: str
) -> None:
    fields = workflow(event=event)
    del fields["status"]
    change = parse_delivery(body(**fields), "live").change
    assert isinstance(change, WorkflowOutcome)
    assert change.status == status


def test_a_workflow_without_environment_or_config_id_is_not_flagged() -> None:
    parsed = parse_delivery(body(**workflow()), "live")
    assert parsed.flags == ()
    assert isinstance(parsed.change, WorkflowOutcome)
    assert parsed.change.environment == "live"
    assert parsed.change.config_id is None


def test_a_lower_case_workflow_status_is_upper_cased() -> None:
    change = parse_delivery(body(**workflow(status="errored")), "live").change
    assert isinstance(change, WorkflowOutcome)
    assert change.status == "ERRORED"


# --- flags --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "flag"),
    [
        pytest.param(b"not json", "not_json", id="text"),
        pytest.param(b"", "not_json", id="empty"),
        pytest.param(b'{"event": "Connection Created"', "not_json", id="truncated"),
        pytest.param(b'{"event": "Connection \xff Created"}', "not_json", id="invalid-utf8"),
        pytest.param(b'{"attempts": NaN}', "not_json", id="nan"),
        pytest.param(b'{"attempts": Infinity}', "not_json", id="infinity"),
        pytest.param(b"[" * 100_000, "not_json", id="deeply-nested-arrays"),
        pytest.param(b'{"a":' * 100_000, "not_json", id="deeply-nested-objects"),
        pytest.param(b"[1, 2]", "not_an_object", id="array"),
        pytest.param(b'"Connection Created"', "not_an_object", id="string"),
        pytest.param(b"42", "not_an_object", id="number"),
        pytest.param(b"null", "not_an_object", id="null"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_flagged(raw: bytes, flag: str) -> None:
    parsed = parse_delivery(raw, "live")
    assert parsed.flags == (flag,)
    assert parsed.change is None
    assert parsed.kind is None
    assert parsed.event is None


def test_an_unknown_event_is_flagged_and_keeps_its_name() -> None:
    parsed = parse_delivery(body(**workflow(event="Workflow Paused")), "live")
    assert parsed.flags == ("unknown_event",)
    assert parsed.event == "Workflow Paused"
    assert parsed.kind is None
    assert parsed.instance_id == "run-1"
    assert parsed.change is None


def test_a_non_string_event_is_an_unknown_event() -> None:
    parsed = parse_delivery(body(**connection(event=7)), "live")
    assert parsed.flags == ("unknown_event",)
    assert parsed.change is None


def test_a_payload_without_event_is_flagged_missing_field_event() -> None:
    fields = connection()
    del fields["event"]
    parsed = parse_delivery(body(**fields), "live")
    assert parsed.flags == ("missing_field:event",)
    assert parsed.slug == "pipedrive"
    assert parsed.change is None


def test_a_connection_without_slug_is_flagged_missing_field_slug() -> None:
    fields = connection()
    del fields["slug"]
    parsed = parse_delivery(body(**fields), "live")
    assert parsed.flags == ("missing_field:slug",)
    assert parsed.kind == "connection"
    assert parsed.linked_account_id == "12345"
    assert parsed.change is None


def test_a_workflow_without_instance_id_is_flagged_missing_field_instance_id() -> None:
    fields = workflow()
    del fields["instance_id"]
    parsed = parse_delivery(body(**fields), "live")
    assert parsed.flags == ("missing_field:instance_id",)
    assert parsed.kind == "workflow"
    assert parsed.change is None


@pytest.mark.parametrize("created_at", ["yesterday", "", "2023-02-30T00:00:00Z"])
def test_an_unparseable_created_at_is_flagged_invalid_field(created_at: str) -> None:
    parsed = parse_delivery(body(**connection(createdAt=created_at)), "live")
    assert parsed.flags == ("invalid_field:createdAt",)
    assert parsed.change is None


@pytest.mark.parametrize("created_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_created_at_that_overflows_utc_is_flagged_not_raised(created_at: str) -> None:
    parsed = parse_delivery(body(**connection(createdAt=created_at)), "live")
    assert parsed.flags == ("invalid_field:createdAt",)
    assert parsed.change is None


def test_a_payload_naming_test_verified_by_a_live_key_is_an_environment_mismatch() -> None:
    parsed = parse_delivery(CONNECTION_EXAMPLE, "live")
    assert parsed.flags == ("environment_mismatch",)
    assert parsed.change is None


def test_a_payload_naming_live_verified_by_a_test_key_is_an_environment_mismatch() -> None:
    parsed = parse_delivery(body(**workflow(environment="live")), "test")
    assert parsed.flags == ("environment_mismatch",)
    assert parsed.change is None


@pytest.mark.parametrize("named", ["production", "live", "LIVE", "Production"])
def test_a_production_or_live_payload_with_a_live_key_is_not_a_mismatch(named: str) -> None:
    parsed = parse_delivery(body(**connection(environment=named)), "live")
    assert parsed.flags == ()
    assert isinstance(parsed.change, ConnectionChange)
    assert parsed.change.environment == "live"


def test_a_non_string_environment_is_a_mismatch() -> None:
    parsed = parse_delivery(body(**connection(environment=1)), "live")
    assert "environment_mismatch" in parsed.flags
    assert parsed.change is None


def test_mismatch_and_field_flags_are_reported_together() -> None:
    fields = connection(environment="test")
    del fields["slug"]
    parsed = parse_delivery(body(**fields), "live")
    assert parsed.flags == ("environment_mismatch", "missing_field:slug")


def test_a_lone_surrogate_in_a_known_event_does_not_raise() -> None:
    """Python's json accepts `\\ud800`; parsing must still answer, never raise."""
    raw = body(**connection(slug="\ud800"))
    parsed = parse_delivery(raw, "live")
    assert parsed.change is None
    assert parsed.flags


def test_a_lone_surrogate_in_an_unknown_event_does_not_raise() -> None:
    parsed = parse_delivery(b'{"event": "\\udfff"}', "live")
    assert parsed.change is None
    assert parsed.flags


CREATED = (
    b'"event":"Connection Created","linked_account_id":"1","slug":"s","createdAt":"2023-11-07"'
)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"event":"Connection Deleted",' + CREATED + b"}", id="top-level"),
        pytest.param(b'{"extra":{"a":1,"b":{"c":1,"c":1}},' + CREATED + b"}", id="nested"),
        pytest.param(b'{"list":[{"a":1,"a":2}],' + CREATED + b"}", id="in-a-list"),
    ],
)
def test_a_body_with_a_duplicate_key_at_any_depth_is_flagged_and_not_projected(
    raw: bytes,
) -> None:
    parsed = parse_delivery(raw, "live")
    assert parsed.flags == ("duplicate_keys",)
    assert parsed.change is None
    assert parsed.kind is None
    assert parsed.linked_account_id == "1"


def test_the_same_key_in_sibling_objects_is_not_a_duplicate() -> None:
    raw = body(**connection(extra=[{"a": 1}, {"a": 1}], nested={"a": {"a": 1}}))
    assert parse_delivery(raw, "live").flags == ()


def test_bodies_differing_only_in_a_duplicate_keys_other_value_are_different_events() -> None:
    first = parse_delivery(b'{"event":"Connection Created",' + CREATED + b"}", "live")
    second = parse_delivery(b'{"event":"Connection Expired",' + CREATED + b"}", "live")
    assert first.flags == second.flags == ("duplicate_keys",)
    assert first.event_key != second.event_key


def nested(depth: int) -> bytes:
    """A connection delivery whose `extra` field makes the body `depth` objects deep."""
    return body(**connection(extra="X")).replace(
        b'"X"', b'{"a":' * (depth - 2) + b"{}" + b"}" * (depth - 2)
    )


def test_a_body_nested_as_deep_as_max_depth_is_read() -> None:
    parsed = parse_delivery(nested(MAX_DEPTH), "live")
    assert parsed.flags == ()
    assert parsed.change is not None


def test_a_body_nested_deeper_than_max_depth_is_not_json_though_python_parses_it() -> None:
    """json.loads takes ~1000 levels, but pydantic could not put the payload in an answer."""
    for depth in (MAX_DEPTH + 1, 500):
        json.loads(nested(depth))
        parsed = parse_delivery(nested(depth), "live")
        assert parsed.flags == ("not_json",)
        assert parsed.change is None


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"9" * 5000, id="top-level"),
        pytest.param(b'{"attempts":' + b"9" * 5000 + b"," + CREATED + b"}", id="in-an-object"),
    ],
)
def test_a_number_over_pythons_int_digit_limit_is_not_json_and_does_not_raise(raw: bytes) -> None:
    """int() refuses more than 4300 digits with a ValueError; parsing must still answer."""
    parsed = parse_delivery(raw, "live")
    assert parsed.flags == ("not_json",)
    assert parsed.change is None


# --- event identity -----------------------------------------------------------------------


def test_identical_bodies_have_the_same_event_key() -> None:
    for raw in (CONNECTION_EXAMPLE, WORKFLOW_EXAMPLE, b"not json", b'{"event": "Other"}'):
        assert parse_delivery(raw, "test").event_key == parse_delivery(raw, "test").event_key


def test_created_at_in_rfc1123_or_iso_for_one_instant_gives_one_key() -> None:
    rfc = parse_delivery(body(**connection(createdAt="Tue, 07 Nov 2023 08:38:33 GMT")), "live")
    iso = parse_delivery(body(**connection(createdAt="2023-11-07T08:38:33Z")), "live")
    offset = parse_delivery(body(**connection(createdAt="2023-11-07T09:38:33+01:00")), "live")
    assert rfc.event_key == iso.event_key == offset.event_key


def test_a_connection_key_ignores_fields_outside_its_identity() -> None:
    plain = parse_delivery(body(**connection()), "live")
    richer = parse_delivery(body(**connection(org_id="other", type="Custom", extra=1)), "live")
    assert plain.event_key == richer.event_key


@pytest.mark.parametrize(
    "fields",
    [connection(environment="test"), workflow(environment="test")],
    ids=["connection", "workflow"],
)
def test_a_flagged_copy_never_shares_the_identity_of_the_valid_event_it_resembles(
    fields: dict[str, Any],
) -> None:
    """Only deliveries the projectors fold may be each other's duplicates."""
    valid = parse_delivery(body(**{**fields, "environment": "live"}), "live")
    assert valid.flags == ()
    flagged = parse_delivery(body(**fields), "live")
    assert "environment_mismatch" in flagged.flags
    assert flagged.event_key != valid.event_key
    assert flagged.event_key == parse_delivery(body(**fields), "live").event_key


def test_a_different_created_at_gives_a_different_key() -> None:
    first = parse_delivery(body(**connection(createdAt="Tue, 07 Nov 2023 08:38:33 GMT")), "live")
    later = parse_delivery(body(**connection(createdAt="Tue, 07 Nov 2023 08:38:34 GMT")), "live")
    assert first.event_key != later.event_key


@pytest.mark.parametrize(
    "change",
    [{"event": "Connection Deleted"}, {"slug": "hubspot"}, {"linked_account_id": "99"}],
)
def test_a_connection_differing_in_identity_gives_a_different_key(
    change: dict[str, str],
) -> None:
    base = parse_delivery(body(**connection()), "live")
    other = parse_delivery(body(**connection(**change)), "live")
    assert base.event_key != other.event_key


def test_two_errored_events_for_one_run_with_different_attempts_have_different_keys() -> None:
    first = parse_delivery(body(**workflow(attempts=1)), "live")
    second = parse_delivery(body(**workflow(attempts=2)), "live")
    assert first.flags == second.flags == ()
    assert first.event_key != second.event_key


def test_a_workflow_key_ignores_the_order_and_spacing_of_fields() -> None:
    fields = workflow(attempts=1)
    compact = json.dumps(fields, separators=(",", ":")).encode()
    reordered = json.dumps(dict(reversed(list(fields.items()))), indent=2).encode()
    assert parse_delivery(compact, "live").event_key == parse_delivery(reordered, "live").event_key


@pytest.mark.parametrize(
    "raw", [CONNECTION_EXAMPLE.replace(b'"test"', b'"live"'), body(**workflow())]
)
def test_the_same_event_in_test_and_live_has_different_keys(raw: bytes) -> None:
    fields = json.loads(raw)
    fields.pop("environment", None)
    raw = json.dumps(fields).encode()
    assert parse_delivery(raw, "test").event_key != parse_delivery(raw, "live").event_key


def test_the_same_flagged_body_in_test_and_live_has_different_keys() -> None:
    test = parse_delivery(b"not json", "test")
    live = parse_delivery(b"not json", "live")
    assert test.event_key != live.event_key


def test_different_unparseable_bodies_have_different_keys() -> None:
    assert parse_delivery(b"not json", "live").event_key != (
        parse_delivery(b"not json!", "live").event_key
    )


# --- payload models -----------------------------------------------------------------------


def test_unknown_connection_fields_are_kept_verbatim() -> None:
    extra = {"region": "eu", "details": {"nested": [1, 2.5, None]}}
    model = ConnectionEventPayload.model_validate(connection(**extra))
    assert model.model_extra == extra
    assert model.model_dump()["details"] == {"nested": [1, 2.5, None]}


def test_unknown_workflow_fields_are_kept_verbatim() -> None:
    extra = {"failed_node": "http-1", "attempts": 3, "error": {"status": 502, "body": "<html>"}}
    model = WorkflowEventPayload.model_validate(workflow(**extra))
    assert model.model_extra == extra


def test_a_numeric_linked_account_id_is_read_as_a_string() -> None:
    parsed = parse_delivery(body(**connection(linked_account_id=12345)), "live")
    assert parsed.flags == ()
    assert parsed.linked_account_id == "12345"
    assert isinstance(parsed.change, ConnectionChange)
    assert parsed.change.linked_account_id == "12345"


def test_a_numeric_linked_account_id_has_the_same_connection_key_as_its_string() -> None:
    number = parse_delivery(body(**connection(linked_account_id=12345)), "live")
    text = parse_delivery(body(**connection(linked_account_id="12345")), "live")
    assert number.event_key == text.event_key


def test_a_numeric_workflow_account_id_is_read_as_a_string() -> None:
    model = WorkflowEventPayload.model_validate(workflow(linked_account_id=42))
    assert model.linked_account_id == "42"


def test_an_email_linked_account_id_is_kept_as_is() -> None:
    parsed = parse_delivery(body(**connection(linked_account_id="ana@example.com")), "live")
    assert parsed.linked_account_id == "ana@example.com"
    assert parsed.flags == ()


# --- the fast paths equal the general ones -----------------------------------------------

_FIELD_VALUES = st.one_of(
    st.none(),
    st.text(max_size=6),
    st.sampled_from(["acct_1", "", "slack", "COMPLETED", "errored"]),
    st.integers(-3, 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
_DATES = st.one_of(
    st.sampled_from(["Mon, 01 Jun 2026 05:42:56 GMT", "2026-06-01T05:42:56Z", "not a date"]),
    st.builds(
        "{}, {:02d} {} {:04d} {:02d}:{:02d}:{:02d} GMT".format,
        st.sampled_from(["Mon", "Sun", "Xyz"]),
        st.integers(0, 99),
        st.sampled_from(["Jan", "Feb", "Jun", "Dec"]),
        st.integers(0, 9999),
        st.integers(0, 99),
        st.integers(0, 99),
        st.integers(0, 99),
    ),
)
_NAMES = [
    "linked_account_id",
    "slug",
    "type",
    "org_id",
    "environment",
    "instance_id",
    "workflow_id",
    "config_id",
    "workflow_name",
    "status",
]


@st.composite
def _payloads(draw: st.DrawFn) -> dict[str, object]:
    payload: dict[str, object] = {
        "event": draw(st.sampled_from([*CONNECTION_STATUS_BY_EVENT, *WORKFLOW_STATUS_BY_EVENT]))
    }
    for name in draw(st.lists(st.sampled_from(_NAMES), unique=True)):
        payload[name] = draw(_FIELD_VALUES)
    if draw(st.booleans()):
        payload["createdAt"] = draw(_DATES)
    return payload


@settings(max_examples=400)
@given(payload=_payloads(), environment=st.sampled_from(["test", "live"]))
# Optional fields the fast check once skipped: pydantic names them invalid_field.
@example(
    payload={"event": "Workflow Completed", "linked_account_id": "0", "instance_id": "0",
             "environment": False},
    environment="test",
)  # fmt: skip
@example(
    payload={"event": "Connection Created", "linked_account_id": "a", "slug": "s",
             "createdAt": "Mon, 01 Jun 2026 05:42:56 GMT", "org_id": True},
    environment="live",
)  # fmt: skip
def test_the_fast_field_check_reads_every_payload_as_the_pydantic_models_do(
    payload: dict[str, object], environment: str
) -> None:
    """Skipping pydantic for plainly typed payloads changes no change, flag or identity."""
    body = json.dumps(payload).encode()
    fast = parse_delivery(body, environment)
    with mock.patch("projector.events._plain", return_value=False):
        general = parse_delivery(body, environment)
    assert fast == general
    assert parse_change(body, environment) == general.change


_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@st.composite
def _refold_dates(draw: st.DrawFn) -> tuple[str, object]:
    """An RFC 1123 date in Refold's shape, valid or not, and the instant it names (or
    ValueError), worked out from the parts it was written from."""
    # Each part mostly in range, so that a good share of the dates exist.
    weekday = draw(st.sampled_from(["Mon", "Sun", "Xyz"]))
    day, month = draw(st.integers(1, 28) | st.integers(0, 99)), draw(st.integers(1, 12))
    year = draw(st.integers(1000, 9999) | st.integers(0, 999))
    hour = draw(st.integers(0, 23) | st.integers(0, 99))
    minute, second = (draw(st.integers(0, 59) | st.integers(0, 99)) for _ in range(2))
    text = (
        f"{weekday}, {day:02d} {_MONTH_NAMES[month - 1]} {year:04d}"
        f" {hour:02d}:{minute:02d}:{second:02d} GMT"
    )
    # The weekday is not checked. A year written below 100 is read by the obsolete two-digit
    # rule of Python's email.utils (00-68: 20xx, 69-99: 19xx), even when written with four.
    if year < 100:
        year += 2000 if year <= 68 else 1900
    try:
        return text, datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:  # no such day, hour, minute or second
        return text, ValueError


@given(
    case=_refold_dates()
    | st.sampled_from(
        [
            ("Mon, 01 Jun 2026 05:42:56 GMT", datetime(2026, 6, 1, 5, 42, 56, tzinfo=UTC)),
            ("2026-06-01T05:42:56Z", datetime(2026, 6, 1, 5, 42, 56, tzinfo=UTC)),
            ("not a date", ValueError),
        ]
    )
)
@example(case=("Tue, 29 Feb 2028 23:59:59 GMT", datetime(2028, 2, 29, 23, 59, 59, tzinfo=UTC)))
@example(case=("Tue, 29 Feb 2026 12:00:00 GMT", ValueError))
@example(case=("Sun, 01 Jan 0999 00:00:00 GMT", datetime(999, 1, 1, tzinfo=UTC)))
@example(case=("Sun, 01 Jan 0026 00:00:00 GMT", datetime(2026, 1, 1, tzinfo=UTC)))
def test_a_refold_date_is_read_as_the_instant_its_parts_name(case: tuple[str, object]) -> None:
    """Refold's date shape, read directly or through email.utils, gives the instant its parts
    name, whatever the weekday; an impossible date is a ValueError."""
    text, expected = case
    event("an instant" if isinstance(expected, datetime) else "no such date")
    try:
        got: object = parse_instant(text)
    except ValueError:
        got = ValueError
    assert got == expected


def test_the_fast_field_check_reads_every_sample_delivery_as_the_pydantic_models_do() -> None:
    """The realistic case: the whole sample stream, fast path against the general one."""
    for body in sample_bodies():
        fast = parse_delivery(body, "live")
        with mock.patch("projector.events._plain", return_value=False):
            assert parse_delivery(body, "live") == fast


@given(
    moment=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5, minutes=30))]
        ),
    )
)
def test_format_instant_writes_the_utc_parts_of_any_aware_instant(moment: datetime) -> None:
    """The UTC short cut and the general conversion both write the instant's UTC parts."""
    offset = moment.utcoffset()
    assert offset is not None
    utc = moment.replace(tzinfo=None) - offset
    fraction = f".{utc.microsecond:06d}" if utc.microsecond else ""
    assert format_instant(moment) == (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
        f"T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}{fraction}Z"
    )


@pytest.mark.parametrize(
    "body",
    [
        b'{"event":"\\ud800"}',
        b'{"event":"\xed\xa0\x80"}',
        '{"event":"\\ud800"}'.encode("utf-16"),
        '{"event":"\\ud800"}'.encode("utf-32"),
    ],
    ids=["escaped", "raw_utf8_bytes", "escaped_utf16", "escaped_utf32"],
)
def test_every_way_of_writing_a_lone_surrogate_is_not_json(body: bytes) -> None:
    """The cheap pre-check must not let any spelling of a lone surrogate through."""
    assert parse_delivery(body, "live").flags == ("not_json",)


_FIELD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.sampled_from(["", "a", "live", "test", "Production", "Mon, 01 Jun 2026 05:42:56 GMT"]),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), max_size=2),
)
_FIELDS = st.dictionaries(
    st.sampled_from(
        ["linked_account_id", "slug", "instance_id", "createdAt", "environment", "type",
         "status", "workflow_id", "workflow_name", "config_id", "org_id", "extra"]
    ),
    _FIELD_VALUES,
)  # fmt: skip


_VALID = {
    "connection": {"linked_account_id": "a", "slug": "s", "type": "General",
                   "createdAt": "Mon, 01 Jun 2026 05:42:56 GMT"},
    "workflow": {"linked_account_id": "a", "instance_id": "i", "status": "ERRORED"},
}  # fmt: skip


@settings(max_examples=400)
@given(
    kind=st.sampled_from(sorted(_VALID)),
    changed=_FIELDS.filter(lambda fields: len(fields) <= 2),
    event=st.sampled_from([*CONNECTION_STATUS_BY_EVENT, *WORKFLOW_STATUS_BY_EVENT, "Other", 7]),
    environment=st.sampled_from(["live", "test"]),
    repeat=st.booleans(),
)
def test_parse_change_is_the_change_parse_delivery_reads(
    kind: str, changed: dict[str, object], event: object, environment: str, repeat: bool
) -> None:
    """The projectors' short parse agrees with the full one: valid payloads, one or two fields
    changed, wrong environments, unknown events and repeated keys."""
    body = json.dumps({"event": event, **_VALID[kind], **changed}).encode()
    if repeat:  # the same key twice, as a hostile sender may write it
        body = body[:-1] + b', "event": "Connection Deleted"}'
    assert parse_change(body, environment) == parse_delivery(body, environment).change


def test_parse_change_agrees_with_parse_delivery_on_every_sample_body() -> None:
    for raw in sample_bodies():
        for environment in ("live", "test"):
            assert parse_change(raw, environment) == parse_delivery(raw, environment).change

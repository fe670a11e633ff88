"""The pure alert core: transitions, the text line and body, flood grouping."""

from __future__ import annotations

from collections.abc import Hashable
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from projector import alerts
from projector.events import ConnectionChange, WorkflowOutcome
from projector.readmodels import CONNECTION_HEALTH, WORKFLOW_RUNS, ReadModel

T0 = datetime(2026, 7, 1, 9, 0, tzinfo=UTC)


def connection(status: str, minute: int, slug: str = "hubspot") -> ConnectionChange:
    return ConnectionChange("live", "acct_1", slug, status, T0 + timedelta(minutes=minute), "Gen")


def run(status: str, instance: str = "inst_1") -> WorkflowOutcome:
    return WorkflowOutcome("live", instance, "acct_1", status, "wf_1", "Sync Deals", "cfg_1")


def raised(model: ReadModel[Any, Any], changes: list[Any]) -> list[tuple[str, str, int]]:
    """(kind, status, seq) of the alerts folding `changes` (seq 1, 2, ...) from nothing raises."""
    states: dict[Hashable, Any] = {}
    _, found = alerts.derive(model, states, list(enumerate(changes, 1)))
    return [(a.kind, a.status, a.seq) for a in found]


def test_an_expiry_then_a_newer_reconnect_alert_once_each() -> None:
    changes = [connection("connected", 0), connection("expired", 5), connection("connected", 9)]
    assert raised(CONNECTION_HEALTH, changes) == [
        (alerts.NEEDS_RECONNECT, "expired", 2),
        (alerts.RECONNECTED, "connected", 3),
    ]


def test_a_first_event_that_is_an_expiry_alerts() -> None:
    assert raised(CONNECTION_HEALTH, [connection("expired", 1)]) == [
        (alerts.NEEDS_RECONNECT, "expired", 1)
    ]


def test_a_duplicate_expiry_does_not_alert_again() -> None:
    changes = [connection("expired", 5), connection("expired", 5), connection("expired", 5)]
    assert raised(CONNECTION_HEALTH, changes) == [(alerts.NEEDS_RECONNECT, "expired", 1)]


def test_a_stale_event_arriving_late_does_not_alert() -> None:
    """An older `connected` after a newer `expired` leaves the state, so raises nothing."""
    changes = [connection("expired", 5), connection("connected", 1)]
    assert raised(CONNECTION_HEALTH, changes) == [(alerts.NEEDS_RECONNECT, "expired", 1)]


def test_an_expired_connection_deleted_resolves_its_alert_as_deleted() -> None:
    changes = [connection("expired", 5), connection("deleted", 6)]
    found = raised(CONNECTION_HEALTH, changes)
    assert found == [(alerts.NEEDS_RECONNECT, "expired", 1), (alerts.RECONNECTED, "deleted", 2)]


def test_a_connection_created_or_deleted_without_expiring_never_alerts() -> None:
    changes = [connection("connected", 0), connection("deleted", 3), connection("connected", 4)]
    assert raised(CONNECTION_HEALTH, changes) == []


def test_a_run_that_errors_then_completes_alerts_failed_then_recovered() -> None:
    changes = [run("ERRORED"), run("COMPLETED")]
    assert raised(WORKFLOW_RUNS, changes) == [
        (alerts.RUN_FAILED, "errored", 1),
        (alerts.RUN_RECOVERED, "completed", 2),
    ]


def test_a_run_timed_out_then_errored_alerts_once() -> None:
    changes = [run("TIMED_OUT"), run("ERRORED"), run("ERRORED")]
    assert raised(WORKFLOW_RUNS, changes) == [(alerts.RUN_FAILED, "timed_out", 1)]


def test_an_error_arriving_after_completion_does_not_alert() -> None:
    """COMPLETED is final in the fold: the late error changes nothing."""
    assert raised(WORKFLOW_RUNS, [run("COMPLETED"), run("ERRORED")]) == []


def test_stopped_and_completed_runs_never_alert() -> None:
    assert raised(WORKFLOW_RUNS, [run("STOPPED"), run("COMPLETED", "inst_2")]) == []


CONNECTION_CHANGES = st.lists(
    st.builds(
        connection,
        st.sampled_from(["connected", "expired", "deleted"]),
        st.integers(0, 5),
        st.sampled_from(["hubspot", "gmail"]),
    ),
    max_size=30,
)


@given(CONNECTION_CHANGES)
def test_each_connection_alternates_needing_and_no_longer_needing_a_reconnect(
    changes: list[ConnectionChange],
) -> None:
    states: dict[Hashable, Any] = {}
    _, found = alerts.derive(CONNECTION_HEALTH, states, list(enumerate(changes, 1)))
    for slug in ("hubspot", "gmail"):
        kinds = [a.kind for a in found if a.slug == slug]
        expected = [alerts.NEEDS_RECONNECT, alerts.RECONNECTED] * len(kinds)
        assert kinds == expected[: len(kinds)]
        final = states.get(("live", "acct_1", slug))
        assert (kinds[-1:] == [alerts.NEEDS_RECONNECT]) == bool(final and final.needs_reconnect)


@given(CONNECTION_CHANGES)
def test_each_change_delivered_twice_alerts_as_delivered_once(
    changes: list[ConnectionChange],
) -> None:
    once = raised(CONNECTION_HEALTH, changes)
    twice = raised(CONNECTION_HEALTH, [c for change in changes for c in (change, change)])
    assert [(kind, status) for kind, status, _ in twice] == [(k, s) for k, s, _ in once]


def test_the_text_line_names_environment_account_app_and_what_happened() -> None:
    alert = alerts.Alert(alerts.NEEDS_RECONNECT, "live", "acct_1", "expired", 42, slug="hubspot")
    assert alerts.text_line(alert) == (
        "live | account acct_1 | hubspot connection expired: the customer needs to reconnect "
        "it (seq 42)"
    )
    failed = alerts.Alert(
        alerts.RUN_FAILED, "test", "acct_2", "timed_out", 7, None, "inst_9", "wf_1", "Sync"
    )
    assert (
        alerts.text_line(failed)
        == "test | account acct_2 | workflow run inst_9 (Sync) timed out (seq 7)"
    )


def test_the_text_line_is_one_line_escaped_for_slack_and_cut_short() -> None:
    alert = alerts.Alert(
        alerts.RECONNECTED, "live", "a<@U123>&b\nc", "connected", 1, slug="x" * 200
    )
    line = alerts.text_line(alert)
    assert "\n" not in line
    assert "a&lt;@U123&gt;&amp;b c" in line
    assert "x" * alerts.TEXT_VALUE_CHARS not in line
    assert alerts.body(alert)["alert"]["slug"] == "x" * 200  # the structured part is whole


def test_the_body_carries_text_and_the_alert_fields_of_a_connection_or_a_run() -> None:
    connection_alert = alerts.Alert(alerts.NEEDS_RECONNECT, "live", "a", "expired", 3, slug="s")
    assert alerts.body(connection_alert)["alert"] == {
        "kind": "connection_needs_reconnect",
        "environment": "live",
        "linked_account_id": "a",
        "slug": "s",
        "status": "expired",
        "seq": 3,
    }
    run_alert = alerts.Alert(alerts.RUN_RECOVERED, "live", "a", "completed", 4, None, "i", "w", "n")
    body = alerts.body(run_alert)
    assert body["alert"] == {
        "kind": "workflow_run_recovered",
        "environment": "live",
        "linked_account_id": "a",
        "instance_id": "i",
        "workflow_id": "w",
        "workflow_name": "n",
        "status": "completed",
        "seq": 4,
    }
    assert alerts.Alert.from_fields(body["alert"]) == run_alert


def expiries(count: int) -> list[alerts.Alert]:
    return [
        alerts.Alert(alerts.NEEDS_RECONNECT, "live", f"acct_{i}", "expired", i, slug="gmail")
        for i in range(1, count + 1)
    ]


def test_alerts_within_the_minutes_limit_go_one_by_one() -> None:
    messages = alerts.plan(expiries(3), sent_in_window=27, max_per_minute=30)
    assert [m.seqs for m in messages] == [[1], [2], [3]]
    assert messages[0].body == alerts.body(expiries(1)[0])


def test_a_flood_beyond_the_limit_goes_as_one_summary_naming_the_count_and_the_first_few() -> None:
    messages = alerts.plan(expiries(300), sent_in_window=0, max_per_minute=30)
    assert len(messages) == 1
    (summary,) = messages
    assert summary.seqs == list(range(1, 301))
    assert summary.body["alert"]["kind"] == alerts.SUMMARY
    assert summary.body["alert"]["count"] == 300
    assert summary.body["alert"]["kinds"] == {alerts.NEEDS_RECONNECT: 300}
    assert [a["linked_account_id"] for a in summary.body["alert"]["first"]] == [
        f"acct_{i}" for i in range(1, alerts.SUMMARY_NAMES + 1)
    ]
    text = summary.body["text"]
    assert text.startswith("300 alerts at once")
    assert "account acct_1 |" in text
    assert "account acct_5 |" in text
    assert "account acct_6 |" not in text
    assert "295 more" in text


def test_while_the_minute_is_full_alerts_wait_for_room() -> None:
    assert alerts.plan(expiries(2), sent_in_window=30, max_per_minute=30) == []
    assert alerts.plan([], sent_in_window=0, max_per_minute=30) == []
